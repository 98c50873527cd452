"""Fixtures for the tokenizer backends: the real Qwen2 plain-text backend, its certificate, and a
copy of the bundled tokenizer files with merges deleted (a real tokenizer the proof must not cover
as it stands)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DELETED_MERGES = 150  # as in the measurement: 150 merges of the first 20,000 removed


@pytest.fixture(scope="session")
def qwen_backend_json(qwen_tokenizer) -> str:
    from pipeline.tokenize.load import plain_text_backend_json

    return plain_text_backend_json(qwen_tokenizer)


@pytest.fixture(scope="session")
def qwen_certificate(qwen_backend_json):
    from pipeline.tokenize.certificate import certify

    return certify(qwen_backend_json)


@pytest.fixture(scope="session")
def deleted_merges_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """The bundled tokenizer folder with every 100th of merges 1,000-16,000 deleted (150 merges)."""
    folder = tmp_path_factory.mktemp("deleted-merges")
    for path in tokenizer_dir.iterdir():
        if path.is_file() and path.name not in ("tokenizer.json", "merges.txt", "vocab.json"):
            shutil.copy(path, folder / path.name)
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    doomed = set(range(1000, 1000 + 100 * DELETED_MERGES, 100))
    spec["model"]["merges"] = [m for i, m in enumerate(merges) if i not in doomed]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def deleted_merges_tokenizer(deleted_merges_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(deleted_merges_dir))
