"""Unit tests of the shard writer's already-tokenized entry point (pipeline.shards.write_token_dataset)."""

import pytest

from schemas.manifest import read_manifest


def test_token_dataset_refuses_ids_outside_the_vocabulary(tmp_path, qwen_tokenizer):
    from pipeline.shards import write_token_dataset
    from pipeline.tokenize.load import tokenizer_info
    from schemas.errors import DataError

    info = tokenizer_info(qwen_tokenizer, name_or_path="qwen2")
    with pytest.raises(DataError, match="token id 151669 outside"):
        write_token_dataset(tmp_path / "ds", {"train": [[1, 2], [151669]]}, tokenizer=info)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    write_token_dataset(tmp_path / "ok", {"train": [[1, 2]]}, tokenizer=info)
    assert read_manifest(tmp_path / "ok").splits["train"].num_tokens == 3

