"""Checks that run before the model's weights load: manifest + shards, tokenizer, data config."""

from __future__ import annotations

import json

import pytest

from schemas.config import CptConfig, load_config
from schemas.errors import ConfigError, DataError, ManifestError, TokenizerError
from trainer.verify import (
    check_tokenizer_matches,
    load_verified_manifest,
    resolve_data_config,
)

EMBEDDING_ROWS = 151_680  # data/tiny-qwen2.json vocab_size


@pytest.fixture
def built(tmp_path, write_token_dataset):
    path = write_token_dataset(
        tmp_path / "shards",
        train=[[1, 2, 3, 4, 5]] * 40,
        eval=[[6, 7, 8]],
        target_bytes=200,
        config={"min_length": 20, "filter_duplicates": False},
    )
    return path


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def test_clean_manifest_loads_from_file_or_folder(built):
    manifest, folder = load_verified_manifest(built, checksums=True)
    assert folder == built.parent
    assert manifest.splits["train"].num_documents == 40
    manifest2, folder2 = load_verified_manifest(built.parent, checksums=True)
    assert folder2 == built.parent and manifest2 == manifest


def test_one_flipped_byte_is_caught_by_sha256_and_names_the_shard(built):
    manifest, _ = load_verified_manifest(built, checksums=True)
    rel = manifest.splits["train"].shards[1].path
    shard = built.parent / rel
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as info:
        load_verified_manifest(built, checksums=True)
    message = _one_line(info)
    assert rel in message and "sha256" in message
    # The documented trade-off: without checksums only sizes are checked, so a same-size edit passes.
    load_verified_manifest(built, checksums=False)


def test_truncated_or_missing_shard_is_caught_without_checksums(built):
    manifest, _ = load_verified_manifest(built, checksums=False)
    first, second = (built.parent / s.path for s in manifest.splits["train"].shards[:2])
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(ManifestError) as info:
        load_verified_manifest(built, checksums=False)
    assert manifest.splits["train"].shards[0].path in _one_line(info)
    second.unlink()
    first.unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_verified_manifest(built, checksums=False)


def test_unknown_schema_version_is_refused(built):
    raw = json.loads(built.read_text())
    raw["schema_version"] = 99
    built.write_text(json.dumps(raw))
    with pytest.raises(ManifestError) as info:
        load_verified_manifest(built, checksums=False)
    assert "99" in _one_line(info)


def test_missing_manifest_and_empty_train_split(tmp_path, write_token_dataset):
    with pytest.raises(ManifestError) as info:
        load_verified_manifest(tmp_path / "nowhere" / "manifest.json", checksums=True)
    assert "cpt-prep build" in _one_line(info)
    empty = write_token_dataset(tmp_path / "empty", train=[], eval=[[1, 2]])
    with pytest.raises(DataError) as info:
        load_verified_manifest(empty, checksums=True)
    assert "no training tokens" in _one_line(info)


def test_tokenizer_with_one_added_token_is_refused(built, tokenizer_dir, qwen_tokenizer):
    from transformers import AutoTokenizer

    manifest, _ = load_verified_manifest(built, checksums=False)
    check_tokenizer_matches(manifest, qwen_tokenizer, embedding_rows=EMBEDDING_ROWS)  # the same one passes
    other = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    other.add_tokens(["<|h3_extra_token|>"])
    with pytest.raises(TokenizerError) as info:
        check_tokenizer_matches(manifest, other, embedding_rows=EMBEDDING_ROWS)
    message = _one_line(info)
    assert f"{len(qwen_tokenizer)} tokens" in message and f"{len(other)} tokens" in message  # names both
    assert "cpt-prep build" in message and "--tokenizer <model path>" in message


def test_vocabulary_larger_than_the_embedding_is_refused(built, qwen_tokenizer):
    manifest, _ = load_verified_manifest(built, checksums=False)
    check_tokenizer_matches(manifest, qwen_tokenizer, embedding_rows=len(qwen_tokenizer))  # exactly fits
    with pytest.raises(TokenizerError) as info:
        check_tokenizer_matches(manifest, qwen_tokenizer, embedding_rows=len(qwen_tokenizer) - 1)
    assert f"only {len(qwen_tokenizer) - 1} rows" in _one_line(info)


def test_data_keys_come_from_the_manifest_and_are_reported(built):
    manifest, _ = load_verified_manifest(built, checksums=False)
    config = CptConfig()  # defaults: min_length 10, filter_duplicates true; not explicit
    lines = resolve_data_config(config, manifest)
    assert config.data.min_length == 20 and config.data.filter_duplicates is False
    assert "data.min_length=20 (from manifest)" in lines
    assert "data.filter_duplicates=false (from manifest)" in lines
    assert not any("mlm_probability" in line for line in lines)


def test_explicit_conflicting_data_key_is_an_error_naming_the_rebuild(built):
    manifest, _ = load_verified_manifest(built, checksums=False)
    config = CptConfig().with_overrides({"min_length": "50"})
    with pytest.raises(ConfigError) as info:
        resolve_data_config(config, manifest)
    message = _one_line(info)
    assert "min_length=20" in message and "--min_length 50" in message and "cpt-prep build" in message
    # The same value set explicitly (as a float from JSON) is fine.
    same = CptConfig.from_dict({"data": {"min_length": 20.0, "filter_duplicates": False}})
    resolve_data_config(same, manifest)
    assert same.data.min_length == 20


def test_mlm_probability_is_reported_as_ignored(built):
    manifest, _ = load_verified_manifest(built, checksums=False)
    config = CptConfig().with_overrides({"mlm_probability": "0.15"})
    lines = resolve_data_config(config, manifest)
    ignored = [line for line in lines if line.startswith("data.mlm_probability=0.15")]
    assert len(ignored) == 1 and "ignored" in ignored[0] and "causal LM" in ignored[0]
    assert config.data.mlm_probability == 0.15  # kept in the written config, so the run is reproducible


def test_a_config_file_restating_a_default_does_not_conflict_with_the_shards(tmp_path, write_token_dataset):
    """The original tool's config spells out `"max_train_samples": null`; shards built with
    --max_train_samples 800 must still train with it (null is only the default restated)."""
    path = write_token_dataset(tmp_path / "shards", train=[[1, 2, 3, 4, 5]] * 40, config={"max_train_samples": 800, "min_length": 20})
    manifest, _ = load_verified_manifest(path, checksums=False)
    config_file = tmp_path / "cpt_config.json"
    config_file.write_text(json.dumps({"data": {"max_train_samples": None, "mlm_probability": None, "min_length": 10}}))
    config = load_config(config_file)
    resolve_data_config(config, manifest)
    assert config.data.max_train_samples == 800 and config.data.min_length == 20  # the shards' settings
    config_file.write_text(json.dumps({"data": {"max_train_samples": 500}}))  # a real, different value still conflicts
    with pytest.raises(ConfigError, match="max_train_samples=500 conflicts"):
        resolve_data_config(load_config(config_file), manifest)
