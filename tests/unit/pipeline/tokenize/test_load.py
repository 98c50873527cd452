"""Loading a tokenizer (clear one-line errors), its identity for the manifest, its plain-text
backend, and the cached profile of both, with the real Qwen2 tokenizer."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tokenize.load import load_profile, load_tokenizer, plain_text_backend_json, profile_folder, profile_key, read_profile, tokenizer_info
from schemas.errors import TokenizerError
from schemas.tokenizer import control_token_ids, tokenizer_fingerprint

REPO = Path(__file__).resolve().parents[4]


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


# ------------------------------------------------------------------------------- cached profiles
def _copy_folder(src, dst):
    dst.mkdir()
    for path in src.iterdir():
        if path.is_file():
            shutil.copy(path, dst / path.name)
    return dst


def test_profile_from_the_cache_equals_the_computed_one(tmp_path, monkeypatch, tokenizer_dir, qwen_tokenizer):
    """The cached profile is exactly what transformers computes, and reading it imports nothing of
    transformers (a fresh process proves it)."""
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _copy_folder(tokenizer_dir, tmp_path / "tok")
    first = load_profile(str(folder))
    assert not first.cached and list((tmp_path / "cache" / "tokenizers").glob("*.json"))
    second = load_profile(str(folder))
    assert second.cached and second == dataclasses.replace(first, cached=True)
    assert second.info == tokenizer_info(qwen_tokenizer, name_or_path=str(folder))
    assert second.backend_json == plain_text_backend_json(qwen_tokenizer)
    code = f"import sys; from pipeline.tokenize.load import load_profile; p = load_profile({str(folder)!r}); print(p.cached, 'transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "CPT_CACHE_DIR": str(tmp_path / "cache")}, cwd=REPO)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr


def test_profile_key_follows_every_input(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    folder = _copy_folder(tokenizer_dir, tmp_path / "tok")
    key = profile_key(str(folder), None)
    assert key == profile_key(str(_copy_folder(tokenizer_dir, tmp_path / "same")), None)  # contents, not the path
    assert profile_key(str(folder), "<|im_end|>") != key
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length"', '"unused": 1, "model_max_length"'))
    assert profile_key(str(folder), None) != key
    edited = profile_key(str(folder), None)
    (folder / "model.safetensors").write_bytes(b"\0" * 16)  # weights: by name and size, not read
    assert profile_key(str(folder), None) != edited
    assert profile_key(str(tmp_path / "missing"), None) is None


def test_a_tampered_profile_is_recomputed(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    first = load_profile(str(tokenizer_dir), separator_token="<|im_end|>")
    assert first.info.separator_token == "<|im_end|>"
    (path,) = (tmp_path / "cache" / "tokenizers").glob("*.json")
    raw = json.loads(path.read_text())
    key = raw["key"]
    for bad in (
        {**raw, "backend_json": raw["backend_json"] + " "},  # no longer matches its sha256
        {**raw, "separator_id": raw["vocab_size"]},
        {**raw, "control_token_ids": ["__import__('os')"]},
        {**raw, "fingerprint": "x"},
        {**raw, "extra": 1},
        [raw],
    ):
        path.write_text(json.dumps(bad))
        assert read_profile(path, key) is None
        assert not load_profile(str(tokenizer_dir), separator_token="<|im_end|>").cached  # recomputed and stored again
        assert read_profile(path, key) is not None
    assert read_profile(path, "0" * 64) is None


def test_remote_code_is_never_cached(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    assert not load_profile(str(tokenizer_dir), trust_remote_code=True).cached
    assert not (tmp_path / "cache" / "tokenizers").exists()


def test_hub_name_uses_the_hf_cache_snapshot(tmp_path, monkeypatch, tokenizer_dir):
    """A hub name resolves to its snapshot of `main` in the Hugging Face cache (the folder a
    `local_files_only` load reads), and its key differs from the same files given as a folder."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--tok"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots").mkdir(parents=True)
    _copy_folder(tokenizer_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert profile_folder("org/tok") == repo / "snapshots" / commit
    assert profile_folder("org/other") is None and profile_folder("not a name") is None
    assert profile_key("org/tok", None) not in (None, profile_key(str(repo / "snapshots" / commit), None))
