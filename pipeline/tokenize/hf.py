"""The reference encoder: HF `tokenizers` (Rust), documents -> token ids, each ending with one separator.

Invariants (tested in tests/unit/pipeline/tokenize/test_hf.py):
- The ORIGINAL text is encoded (never the normalized-for-hashing form), with no truncation (the
  trainer packs) and no special tokens added by the tokenizer's post-processor.
- Exactly one separator id (`schemas.tokenizer.resolve_separator`, `<|endoftext|>` for Qwen) ends
  every document.
- Text that spells an added token (`<|endoftext|>`, `<|im_start|>`, `<tool_call>`, ...) is encoded as
  plain text: the encoder is the tokenizer's Rust backend with its added-token table emptied
  (`pipeline.tokenize.load.plain_text_backend_json`), so no id in
  `schemas.tokenizer.control_token_ids` can come out of it. `encode_special_tokens = True` would
  not do: it splits only tokens marked special, and Qwen's `<tool_call>` (151657) and
  `<|fim_prefix|>` (151659) are added but not special. Any control id that still appears (a model
  whose base vocabulary holds one) is an error, never silently kept.
- Speed: the Rust `tokenizers.Tokenizer` encodes a batch per call (`encode_batch_fast`, no offsets),
  about 1.5 MB/s per core for Qwen2 on mixed English/Chinese; the build runs one encoder per worker
  process rather than the Python wrapper per document. Where the normalizer is NFC (Qwen2), text
  that NFC provably leaves unchanged skips it (`DocumentEncoder`): ~12-15% faster, same ids.
  `pipeline.tokenize.fast` is ~4x faster again and falls back to this encoder.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from schemas.errors import TokenizerError


class DocumentEncoder:
    """Encodes batches of documents to ids + one separator each.

    When the backend's normalizer is exactly NFC (Qwen2, Qwen2.5), documents that NFC provably
    leaves unchanged (`nfc_inert`: 99% of the benchmark corpus by bytes) are encoded by a copy of the
    backend without the normalizer, which skips its per-character alignment bookkeeping (~12-15%
    of tokenization time). The ids are the same by construction; the rest go through the full
    backend, built on first need (tested: same ids as `nfc_fast_path=False`, which sends every
    document through the full backend, on real and adversarial text)."""

    def __init__(self, backend: Any, *, separator_id: int, control_ids: Sequence[int], dtype: str = "uint32", nfc_fast_path: bool = True) -> None:
        """`backend`: the plain-text backend's JSON (`load.plain_text_backend_json`), or the
        `tokenizers.Tokenizer` itself (`load.plain_text_backend`), which is used as it is."""
        from tokenizers import Tokenizer, normalizers

        self._backend_json = backend if isinstance(backend, str) else None
        self._encode_full = self._encode_inert = None
        if isinstance(backend, str):
            tokenizer = Tokenizer.from_str(backend)  # ~0.5 s for Qwen2: the second one only if needed
        else:
            tokenizer = Tokenizer(backend.model)  # a copy that shares the model; the original stays whole
            for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
                if getattr(backend, part) is not None:
                    setattr(tokenizer, part, getattr(backend, part))
            self._encode_full = _batch_encoder(backend)
        if nfc_fast_path and type(tokenizer.normalizer) is normalizers.NFC:
            tokenizer.normalizer = None
            self._encode_inert = _batch_encoder(tokenizer)
        else:
            self._encode_full = _batch_encoder(tokenizer)
        self.separator_id = int(separator_id)
        self.control_ids = np.asarray(sorted(set(int(i) for i in control_ids)), dtype=np.int64)
        self.dtype = np.dtype(dtype)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`(ids, offsets)`: document i is `ids[offsets[i]:offsets[i+1]]`, separator last."""
        encodings = self._encodings(list(texts))
        lengths = np.fromiter((len(e) + 1 for e in encodings), dtype=np.int64, count=len(encodings))  # len(e): no list of ids
        offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=self.dtype)
        for i, e in enumerate(encodings):
            ids[offsets[i] : offsets[i + 1] - 1] = e.ids
        ids[offsets[1:] - 1] = self.separator_id
        check_no_control(ids, offsets, self.control_ids)
        return ids, offsets

    def _encodings(self, texts: list[str]) -> list:
        if not texts:
            return []
        if self._encode_inert is None:
            return self._encode_full(texts, add_special_tokens=False)
        inert = nfc_inert(texts)
        if inert.all():
            return self._encode_inert(texts, add_special_tokens=False)
        if self._encode_full is None:
            from tokenizers import Tokenizer

            self._encode_full = _batch_encoder(Tokenizer.from_str(self._backend_json))
        encodings: list = [None] * len(texts)
        for flag, encode in ((True, self._encode_inert), (False, self._encode_full)):
            positions = np.flatnonzero(inert == flag).tolist()
            if positions:
                for i, e in zip(positions, encode([texts[i] for i in positions], add_special_tokens=False)):
                    encodings[i] = e
        return encodings


def check_no_control(ids: np.ndarray, offsets: np.ndarray, control_ids: np.ndarray) -> None:
    """TokenizerError when a control id (sorted int64 array) appears anywhere but a document's end."""
    if not len(control_ids) or not len(ids):
        return
    inside = np.ones(len(ids), dtype=bool)
    inside[offsets[1:] - 1] = False
    bad = inside & np.isin(ids, control_ids)
    if bad.any():
        token_id = int(ids[np.argmax(bad)])
        raise TokenizerError(
            f"the tokenizer's base vocabulary produced control token id {token_id} from plain text; "
            "this tokenizer cannot encode documents safely, use one whose control tokens are added tokens"
        )


def _batch_encoder(tokenizer: Any):
    return getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets (tokenizers >= 0.21)


@functools.lru_cache(maxsize=1)
def nfc_active_table() -> np.ndarray:
    """bool per code point: True where the character can make NFC change a text, under this
    Python's Unicode database or any other version.

    Active: a character that NFC changes on its own (singletons such as U+212B ANGSTROM SIGN,
    composition exclusions), a non-zero combining class (it can be reordered or composed), a
    non-first element of a canonical decomposition (e.g. U+0CD5, which composes with what precedes
    it), Hangul medial vowels and final consonants (algorithmic composition), surrogates, and every
    code point unassigned here. A precomposed letter such as U+00E9 is inert: it only changes next
    to an active character. Unicode's stability policy fixes decompositions and combining classes
    once assigned, so a character inert here is inert in the tokenizer's (possibly older) tables
    too, and a newer one is unassigned here, so active."""
    import unicodedata

    active = np.zeros(0x110000, dtype=bool)
    active[0xD800:0xE000] = True
    active[0x1161:0x1176] = active[0x11A8:0x11C3] = True
    active[0x40000:0xE0000] = True  # planes 4-13: unassigned in every Unicode version so far
    # Planes 15-16 are private use (an immutable range: category Co, no decomposition, class 0),
    # inert, except the noncharacters that end each plane (unassigned): no lookup needed.
    active[[0xFFFFE, 0xFFFFF, 0x10FFFE, 0x10FFFF]] = True
    for cp in (*range(0x40000), *range(0xE0000, 0xF0000)):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000:
            continue
        if unicodedata.combining(c) or unicodedata.category(c) == "Cn" or unicodedata.normalize("NFC", c) != c:
            active[cp] = True
        decomposition = unicodedata.decomposition(c)
        if decomposition and not decomposition.startswith("<"):  # canonical (not compatibility)
            for part in decomposition.split()[1:]:
                active[int(part, 16)] = True
    return active


def nfc_inert(texts: Sequence[str]) -> np.ndarray:
    """bool per text: True where NFC provably leaves it unchanged (ASCII, or no active character:
    see `nfc_active_table`), one vectorized lookup for the whole batch."""
    return texts_free_of(texts, nfc_active_table())


def texts_free_of(texts: Sequence[str], flagged: np.ndarray) -> np.ndarray:
    """bool per text: True where no code point of the text is flagged (`flagged`: bool per code
    point, ASCII never flagged), one vectorized lookup for the whole batch."""
    free = np.ones(len(texts), dtype=bool)
    positions = [i for i, text in enumerate(texts) if not text.isascii()]
    if positions:
        codes = np.frombuffer("".join(texts[i] for i in positions).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        counts = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(flagged[codes], out=counts[1:])
        lengths = np.fromiter((len(texts[i]) for i in positions), dtype=np.int64, count=len(positions))
        ends = np.cumsum(lengths)
        free[positions] = counts[ends] == counts[ends - lengths]  # no flagged code point in the text
    return free
