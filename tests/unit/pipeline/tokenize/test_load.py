"""Loading a tokenizer (clear one-line errors), its identity for the manifest, and its plain-text
backend, with the real Qwen2 tokenizer."""

from __future__ import annotations

import json

import pytest

from pipeline.tokenize.load import load_tokenizer, plain_text_backend_json, tokenizer_info
from schemas.errors import TokenizerError
from schemas.tokenizer import control_token_ids, tokenizer_fingerprint


def test_plain_text_backend_has_no_added_tokens(qwen_tokenizer):
    spec = json.loads(plain_text_backend_json(qwen_tokenizer))
    assert spec["added_tokens"] == [] and spec["truncation"] is None and spec["padding"] is None


def test_tokenizer_info_identity(qwen_tokenizer, tokenizer_dir):
    info = tokenizer_info(qwen_tokenizer, name_or_path=str(tokenizer_dir))
    assert info.fingerprint == tokenizer_fingerprint(qwen_tokenizer)
    assert info.vocab_size == len(qwen_tokenizer) > 65536
    assert info.files_sha256 and len(info.files_sha256) == 64
    assert info.control_token_ids == control_token_ids(qwen_tokenizer)
    with pytest.raises(TokenizerError, match="not in the tokenizer's vocabulary"):
        tokenizer_info(qwen_tokenizer, name_or_path="x", separator_token="<|no_such|>")


def test_load_tokenizer_errors_name_the_fix(tmp_path, monkeypatch, tokenizer_dir):
    with pytest.raises(TokenizerError, match="tokenizer folder not found.*--tokenizer") as info:
        load_tokenizer(str(tmp_path / "nope"))
    assert str(tokenizer_dir) in str(info.value)  # the bundled folder is offered as the example
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError, match="not in the Hugging Face cache.*--tokenizer PATH") as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(info.value)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from"):
        load_tokenizer(str(tmp_path / "junk"))


def test_load_tokenizer_from_folder(tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    assert tok.backend_tokenizer is not None and len(tok) == 151669
