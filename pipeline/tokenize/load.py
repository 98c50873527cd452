"""Loading a transformers tokenizer, its identity for the manifest, and its plain-text Rust backend.

- `load_tokenizer`: a local folder, the Hugging Face cache or the hub; a one-line TokenizerError
  with the `--tokenizer PATH` fix when none works (offline machines ask the hub once, for 3 s).
- `tokenizer_info`: what the manifest records (`schemas.manifest.TokenizerInfo`); the same
  whichever backend encodes (`pipeline.tokenize.backend`).
- `plain_text_backend` / `plain_text_backend_json`: the backend with no added tokens, which both
  encoders start from.
- `load_profile`: what a build needs of a tokenizer (`tokenizer_info` and the plain-text backend
  JSON), computed by the functions above and cached per tokenizer (`pipeline.tokenize.cache`, kind
  `tokenizers`), so that a build with a tokenizer seen before does not import transformers (and
  torch with it): 0.1 s instead of ~3.5 s of the main process's CPU. The key covers every input of
  that computation: the profile version, the transformers and tokenizers versions, the requested
  separator, and the tokenizer folder's files (contents; weight files by name and size), for a
  local folder or the Hugging Face cache's snapshot of a hub name. `trust_remote_code` is never
  cached (its code may read anything).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from pipeline.tokenize import cache
from schemas.errors import TokenizerError
from schemas.manifest import TokenizerInfo
from schemas.tokenizer import (
    bundled_tokenizer_dir,
    control_token_ids,
    resolve_separator,
    tokenizer_files_sha256,
    tokenizer_fingerprint,
)

logger = logging.getLogger(__name__)

_HUB_CONNECT_TIMEOUT_S = 3.0  # the hub client retries for ~50 s when there is no network; ask once, quickly


def _local_hint() -> str:
    try:
        example = str(bundled_tokenizer_dir())
    except TokenizerError:
        example = "/path/to/tokenizer_folder"
    return f"pass a local tokenizer folder with --tokenizer PATH (e.g. --tokenizer {example})"


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable() -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=_HUB_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """A fast transformers tokenizer from a local folder, the Hugging Face cache, or the hub.

    TokenizerError (one line, with the `--tokenizer PATH` fix) when it cannot be loaded. Loads are
    cached per process, keyed by the folder's file sizes and times, so a changed folder reloads."""
    path = Path(name_or_path).expanduser()
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file()) if path.is_dir() else ()
    return _load_tokenizer(name_or_path, trust_remote_code, stamp)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name_or_path: str, trust_remote_code: bool, stamp: tuple) -> Any:
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise TokenizerError(f"tokenizer folder not found: {name_or_path}; {_local_hint()}")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise TokenizerError(f"cannot load a tokenizer from {name_or_path} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); {_local_hint()}") from None
    else:
        tok = None
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, local_files_only=True)
        except Exception:
            pass
        if tok is None:
            if _offline() or not _hub_reachable():
                raise TokenizerError(f"cannot load tokenizer {name_or_path!r}: it is not in the Hugging Face cache and the hub cannot be reached (offline); {_local_hint()}")
            try:
                tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            except Exception as exc:
                raise TokenizerError(f"cannot load tokenizer {name_or_path!r} ({exc.__class__.__name__}); check the name, or {_local_hint()}") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizerError(f"tokenizer {name_or_path!r} has no fast (Rust) backend ({type(tok).__name__}); use a tokenizer with a tokenizer.json")
    return tok


def plain_text_backend(tokenizer: Any) -> Any:
    """The Rust backend (`tokenizers.Tokenizer`) with no added tokens, truncation or padding:
    encodes text as text. It shares the loaded model, so it costs nothing to make."""
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    plain = Tokenizer(backend.model)
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        value = getattr(backend, part)
        if value is not None:
            setattr(plain, part, value)
    return plain


def plain_text_backend_json(tokenizer: Any) -> str:
    """`plain_text_backend` as JSON (what worker processes load).

    Rebuilt from the backend's model and pipeline components (the same JSON as editing the
    serialized tokenizer, without parsing ~5 MB of JSON: 0.15 s instead of 1.5 s for Qwen2)."""
    return plain_text_backend(tokenizer).to_str()


def tokenizer_info(tokenizer: Any, *, name_or_path: str, separator_token: Optional[str] = None) -> TokenizerInfo:
    """The tokenizer identity recorded in the manifest (schemas.manifest.TokenizerInfo)."""
    token, token_id = resolve_separator(tokenizer, separator_token)
    return TokenizerInfo(
        name_or_path=name_or_path,
        class_name=type(tokenizer).__name__,
        vocab_size=len(tokenizer),
        separator_token=token,
        separator_id=token_id,
        control_token_ids=control_token_ids(tokenizer),
        fingerprint=tokenizer_fingerprint(tokenizer),
        files_sha256=tokenizer_files_sha256(name_or_path) if Path(name_or_path).expanduser().is_dir() else None,
    )


# ------------------------------------------------------------------------------- cached profiles
PROFILE_VERSION = 1  # bump when tokenizer_info or plain_text_backend_json change what they compute
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")
_HASHED_MAX_BYTES = 256 << 20  # a larger file that is not a weight file is keyed by name and size too
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TokenizerProfile:
    """What a build needs of its tokenizer."""

    info: TokenizerInfo
    backend_json: str  # plain_text_backend_json
    cached: bool  # read from the cache (transformers was not imported)


def load_profile(name_or_path: str, *, trust_remote_code: bool = False, separator_token: Optional[str] = None) -> TokenizerProfile:
    """`tokenizer_info` and `plain_text_backend_json` of a tokenizer, from the cache when an entry
    for exactly these files and versions is there and valid, else computed (and then cached)."""
    key = None if trust_remote_code else profile_key(name_or_path, separator_token)
    if key is not None:
        entry = read_profile(cache.cache_folder("tokenizers") / f"{key}.json", key)
        if entry is not None:
            fields, backend_json = entry
            return TokenizerProfile(TokenizerInfo(name_or_path=name_or_path, **fields), backend_json, cached=True)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    info = tokenizer_info(tokenizer, name_or_path=name_or_path, separator_token=separator_token)
    backend_json = plain_text_backend_json(tokenizer)
    key = None if trust_remote_code else profile_key(name_or_path, separator_token)  # the load may have fetched files
    if key is not None:
        fields = {k: v for k, v in asdict(info).items() if k != "name_or_path"}
        cache.store("tokenizers", key, {"key": key, **fields, "backend_sha256": _sha256(backend_json), "backend_json": backend_json})
    return TokenizerProfile(info, backend_json, cached=False)


def profile_folder(name_or_path: str) -> Optional[Path]:
    """The folder a tokenizer loads from without the network: the local folder, or the Hugging Face
    cache's snapshot of `main` for a hub name (`org/name`); None when there is none."""
    path = Path(name_or_path).expanduser()
    if path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists():
        return path if path.is_dir() else None
    if name_or_path.count("/") != 1 or not re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        return None
    from huggingface_hub import constants  # the cache's location only (~40 ms, no network)

    repo = Path(constants.HF_HUB_CACHE) / f"models--{name_or_path.replace('/', '--')}"
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if re.fullmatch(r"[0-9a-f]{40}", commit) and snapshot.is_dir() else None


def profile_key(name_or_path: str, separator_token: Optional[str]) -> Optional[str]:
    """The cache key of a tokenizer's profile (see the module docstring), or None when it has no folder."""
    folder = profile_folder(name_or_path)
    if folder is None:
        return None
    h = hashlib.sha256()
    versions = {name: _version(name) for name in ("transformers", "tokenizers")}
    where = "hub" if folder != Path(name_or_path).expanduser() else "folder"  # files_sha256 is recorded for a folder only
    h.update(f"cpt-tokenizer-profile {PROFILE_VERSION}; {versions}; {where}; separator {separator_token!r}\0".encode())
    try:
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            size = path.stat().st_size
            h.update(f"{path.name}\0{size}\0".encode())
            if not path.name.endswith(_WEIGHT_SUFFIXES) and size <= _HASHED_MAX_BYTES:
                h.update(path.read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def read_profile(path: Path, key: str) -> Optional[tuple[dict[str, Any], str]]:
    """(TokenizerInfo fields but `name_or_path`, backend JSON) of a cache entry, or None when it is
    missing, malformed, for another key, or its backend JSON does not match its sha256."""
    raw = cache.read_json(path)
    names = {"key", "class_name", "vocab_size", "separator_token", "separator_id", "control_token_ids", "fingerprint", "files_sha256", "backend_sha256", "backend_json"}
    if not isinstance(raw, dict) or set(raw) != names or raw["key"] != key:
        return None
    vocab = raw["vocab_size"]
    valid = (
        all(isinstance(raw[n], str) for n in ("class_name", "separator_token", "fingerprint", "backend_sha256", "backend_json"))
        and type(vocab) is int and vocab > 0
        and type(raw["separator_id"]) is int and 0 <= raw["separator_id"] < vocab
        and isinstance(raw["control_token_ids"], list) and all(type(i) is int and 0 <= i < vocab for i in raw["control_token_ids"])
        and _SHA256.fullmatch(raw["fingerprint"]) is not None
        and (raw["files_sha256"] is None or (isinstance(raw["files_sha256"], str) and _SHA256.fullmatch(raw["files_sha256"]) is not None))
        and _sha256(raw["backend_json"]) == raw["backend_sha256"]
    )
    if not valid:
        return None
    fields = {n: raw[n] for n in names - {"key", "backend_sha256", "backend_json"}}
    return fields, raw["backend_json"]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"
