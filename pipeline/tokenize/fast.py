"""The fast encoder: tiktoken's rank-based BPE (Rust) built from the tokenizer's own vocabulary, with
the same ids as `pipeline.tokenize.hf` wherever `pipeline.tokenize.certificate` proves it.

How it is built: each token string of the byte-level vocabulary maps to its bytes through the GPT-2
byte map (`Ġ` -> 0x20, ...), rank = id; the pre-tokenizer regex is the one in `tokenizer.json`
(or GPT-2's for a plain `ByteLevel(use_regex=true)`); the tiktoken Encoding has no special tokens
in use, so text that spells `<|endoftext|>`, `<tool_call>`, ... is plain text, as on the HF side.

What goes to HF instead (`FastDocumentEncoder`), so that the ids never depend on which backend ran:
- documents holding a code point of the certificate's reference table: every character on which
  NFC could act (`pipeline.tokenize.hf.nfc_active_table`: combining marks, jamo, singletons, and
  every code point unassigned in this Python's Unicode database, hence anything newer than it), and
  every character on which the probe found tiktoken's regex classes differ from HF's;
- documents whose fast ids hold a token the certificate could not vouch for (rank-BPE over its
  own bytes takes an unlisted merge, or does not rebuild it).
On text free of both, NFC is the identity and the two BPEs are equal, so the fast ids are HF's.

Speed (Qwen2, one core): ~3.4x HF `tokenizers` single-threaded on mixed English/Chinese; the
per-document routing is one vectorized table lookup (`hf.texts_free_of`).
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from pipeline.tokenize import cache
from pipeline.tokenize.hf import DocumentEncoder, check_no_control, texts_free_of

# GPT-2's pre-tokenizer regex: what `ByteLevel(use_regex=true)` splits with.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Encoding.special_tokens needs one entry for tiktoken to build its special-token regex sanely (an
# empty set gives an empty pattern); `encode_ids` never allows it, so it is plain text too.
_UNUSED_SPECIAL = "<|cpt-unused-special|>"


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@functools.lru_cache(maxsize=1)
def _to_latin1() -> dict[int, int]:
    return {ord(ch): b for ch, b in byte_decoder().items()}


def token_bytes(token: str) -> Optional[bytes]:
    """The bytes a byte-level token string stands for (None when it holds a non-alphabet character)."""
    latin = token.translate(_to_latin1())
    try:
        return latin.encode("latin-1")
    except UnicodeEncodeError:
        return None


def pre_tokenizer_pattern(pre_tokenizer: Optional[dict]) -> tuple[Optional[str], str]:
    """(regex, "") for the two byte-level pre-tokenizers tiktoken reproduces, else (None, why not)."""
    if not isinstance(pre_tokenizer, dict):
        return None, f"pre-tokenizer {pre_tokenizer!r} is not byte-level BPE's"
    kind = pre_tokenizer.get("type")
    if kind == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space") or not pre_tokenizer.get("use_regex", True):
            return None, "ByteLevel pre-tokenizer with add_prefix_space or without its regex"
        return GPT2_PATTERN, ""
    if kind == "Sequence":
        parts = pre_tokenizer.get("pretokenizers") or []
        if len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel":
            split, level = parts
            regex = (split.get("pattern") or {}).get("Regex")
            if (
                isinstance(regex, str)
                and split.get("behavior") == "Isolated"
                and not split.get("invert")
                and not level.get("add_prefix_space")
                and not level.get("use_regex", True)
            ):
                return regex, ""
        return None, "pre-tokenizer sequence other than Split(regex, Isolated) + ByteLevel(use_regex=false)"
    return None, f"pre-tokenizer type {kind!r} is not one tiktoken reproduces"


def build_encoding(backend: dict, pattern: str) -> Any:
    """A tiktoken Encoding over the backend's BPE vocabulary (rank = id); ValueError when a token is
    not byte-level."""
    ranks: dict[bytes, int] = {}
    for token, token_id in backend["model"]["vocab"].items():
        raw = token_bytes(token)
        if raw is None:
            raise ValueError(f"token {token!r} (id {token_id}) is not in the byte-level alphabet")
        ranks[raw] = int(token_id)
    return _encoding(ranks, pattern)


def _encoding(ranks: dict[bytes, int], pattern: str) -> Any:
    import tiktoken

    top = max(ranks.values()) + 1
    return tiktoken.Encoding(name="cpt-fast", pat_str=pattern, mergeable_ranks=ranks, special_tokens={_UNUSED_SPECIAL: top})


# ---------------------------------------------------------------------- the token table of a worker
# A worker builds its Encoding from the bytes of every token, by id (~0.05 s), instead of parsing the
# backend's 7 MB of JSON and mapping 151,643 token strings (~0.4 s per worker for Qwen2). The table
# is computed once per certified backend and cached (`pipeline.tokenize.cache`, kind `fast-vocab`,
# keyed by the certificate's key); the build hands it to its workers as a file in its staging folder.
def token_table(backend_json: str, key: str) -> list[bytes]:
    """The bytes of token 0, 1, ... of a certified backend (ids are 0 .. n-1), from the cache or computed."""
    cached = read_token_table(cache.cache_folder("fast-vocab") / f"{key}.json", key)
    if cached is not None:
        return cached
    vocab = json.loads(backend_json)["model"]["vocab"]
    tokens: list[bytes] = [b""] * len(vocab)
    for token, token_id in vocab.items():
        tokens[int(token_id)] = token_bytes(token)  # byte-level and 0 .. n-1: the certificate checked both
    cache.store("fast-vocab", key, token_table_entry(tokens, key))
    return tokens


def token_table_entry(tokens: Sequence[bytes], key: str) -> dict[str, Any]:
    return {"key": key, "bytes": base64.b64encode(b"".join(tokens)).decode("ascii"), "lengths": [len(t) for t in tokens]}


def write_token_table(path: Path, backend_json: str, key: str) -> None:
    """Write the certified backend's token table to `path`, for the build's workers (`read_token_table`)."""
    cache.write_json_atomic(path, token_table_entry(token_table(backend_json, key), key))


def read_token_table(path: Any, key: str, num_tokens: Optional[int] = None) -> Optional[list[bytes]]:
    """The table in `path` (JSON, `token_table_entry`), or None when it is missing, malformed, for
    another key, of another size than `num_tokens`, or holds an empty or repeated token."""
    raw = cache.read_json(path)
    if not isinstance(raw, dict) or set(raw) != {"key", "bytes", "lengths"} or raw["key"] != key:
        return None
    lengths = raw["lengths"]
    if not isinstance(raw["bytes"], str) or not isinstance(lengths, list) or not all(type(n) is int and n > 0 for n in lengths):
        return None
    try:
        data = base64.b64decode(raw["bytes"], validate=True)
    except ValueError:
        return None
    if sum(lengths) != len(data) or (num_tokens is not None and len(lengths) != num_tokens):
        return None
    ends = np.cumsum(lengths).tolist()
    tokens = [data[end - n : end] for n, end in zip(lengths, ends)]
    return tokens if len(set(tokens)) == len(tokens) else None


def encoding_from_table(tokens: Sequence[bytes], pattern: str) -> Any:
    """`build_encoding` from a token table (rank = id = position)."""
    return _encoding({t: i for i, t in enumerate(tokens)}, pattern)


def encode_ids(encoding: Any, text: str) -> np.ndarray:
    """tiktoken's ids of `text` as uint32, with no special token allowed: the ids of
    `encode_ordinary` (one regex pass over the whole text), without building a Python list
    (~8% of the encoding time)."""
    return encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


class FastDocumentEncoder:
    """Encodes batches of documents to ids + one separator each: tiktoken where the certificate
    vouches for the text, the HF `DocumentEncoder` (built on first need) for the rest.

    `reference_table`: bool per code point, True where a document holding it goes to HF;
    `suspect_ids`: tokens whose presence in the fast ids sends the document to HF."""

    def __init__(
        self,
        backend_json: Union[str, Path],
        *,
        encoding: Any,
        reference_table: np.ndarray,
        suspect_ids: Sequence[int],
        separator_id: int,
        control_ids: Sequence[int],
        dtype: str = "uint32",
    ) -> None:
        self._backend_json = backend_json
        self._encoding = encoding
        self._reference_table = reference_table
        self._suspect = np.asarray(sorted(set(int(i) for i in suspect_ids)), dtype=np.int64)
        self._hf: Optional[DocumentEncoder] = None
        self.separator_id = int(separator_id)
        self.control_ids = np.asarray(sorted(set(int(i) for i in control_ids)), dtype=np.int64)
        self.dtype = np.dtype(dtype)
        self.num_reference_documents = 0  # documents encoded by HF so far (routed by the rules above)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, offsets)`: document i is `ids[offsets[i]:offsets[i+1]]`, separator last."""
        texts = list(texts)
        fast_ok = texts_free_of(texts, self._reference_table)
        pieces: list[Optional[np.ndarray]] = [None] * len(texts)
        for i in np.flatnonzero(fast_ok).tolist():
            pieces[i] = encode_ids(self._encoding, texts[i])
        if self._suspect.size:
            for i in np.flatnonzero(fast_ok).tolist():
                if np.isin(pieces[i], self._suspect).any():
                    fast_ok[i] = False
        routed = np.flatnonzero(~fast_ok).tolist()
        if routed:
            if self._hf is None:
                # The full backend only: routed documents are NFC-active (mostly), and one backend
                # costs ~0.45 s to build where the NFC fast path would build two.
                if isinstance(self._backend_json, Path):  # read only when a document needs HF
                    self._backend_json = self._backend_json.read_text(encoding="utf-8")
                self._hf = DocumentEncoder(self._backend_json, separator_id=self.separator_id, control_ids=self.control_ids.tolist(), dtype=str(self.dtype), nfc_fast_path=False)
            ref_ids, ref_offsets = self._hf.encode([texts[i] for i in routed])
            for k, i in enumerate(routed):
                pieces[i] = ref_ids[ref_offsets[k] : ref_offsets[k + 1] - 1]
            self.num_reference_documents += len(routed)
        lengths = np.fromiter((len(p) + 1 for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=self.dtype)
        for i, p in enumerate(pieces):
            ids[offsets[i] : offsets[i + 1] - 1] = p
        ids[offsets[1:] - 1] = self.separator_id
        check_no_control(ids, offsets, self.control_ids)
        return ids, offsets
