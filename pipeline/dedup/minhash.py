"""Exact and MinHash-LSH near-duplicate detection, vectorized with numpy (no per-shingle Python).

- Normalization (for hashing only) and exact keys live in `pipeline.normalize`.
- Shingles: the normalized text is split into two streams. CJK characters (Han, Hiragana,
  Katakana, Hangul, in order, spaces ignored) are shingled by character n-grams (default 5);
  every other run of non-space characters is a word, shingled by word n-grams (default 5, as
  FineWeb/datatrove). Mixed documents get both kinds. A stream shorter than n but not empty gives
  one shingle of its whole content; a document with no full n-gram in either stream gives exactly
  one shingle (its whole normalized text), so every document has a defined signature.
- Shingle hashes are 64-bit: per-character pseudo-random values combined by a polynomial mod 2^64
  (computed for all words / n-grams at once from prefix sums), then the MurmurHash3 fmix64
  finalizer. Two different shingles collide with probability ~2^-64 (per pair).
- MinHash: num_perm permutations h -> ((a*h + b) mod 2^64) mod (2^61-1), a in [1, p), b in [0, p)
  drawn from numpy RandomState(seed) exactly as datasketch and datatrove draw them. The mod is the
  Mersenne fold (x & p) + (x >> 61), equal to x % p except for 8 of every 2^61 values of x.
- LSH: num_bands bands of rows_per_band rows; two documents are candidates when one band is
  equal. Defaults 14 x 8 = 112 (FineWeb): threshold (1/b)^(1/r) ~ 0.72; P(caught) is 0.92 at
  Jaccard 0.8, 0.9996 at 0.9 and 0.054 at 0.5 (so pairs just below 0.5 are still merged ~5% of
  the time; random pairs at Jaccard < 0.3 essentially never).
- `pipeline.dedup.lsh.NearDuplicateIndex` keeps the FIRST document inserted: `add_if_new` in input order.

Speed (bench/bench_minhash.py on data/sample, CPU seconds of one process on the shared 2-core
machine): `keys_and_signatures` ~10 MB/s on English, ~6.5 MB/s on Chinese (3 bytes and one
shingle per character), 11-19x datasketch with its defaults on the same shingles. The cost is the
(shingles x num_perm) uint64 block, ~2.5 ns per element for mul, add, Mersenne fold and the
per-document minimum; everything before it (normalize, shingle, hash) is ~30 ms per MB.
Use the batched calls: one document per call is ~10x slower (numpy call overhead).
"""

from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

import numpy as np

from pipeline.dedup.lsh import PowerTable, fmix64, lsh_threshold
from pipeline.normalize import SEPARATOR, SPACE, NormalizedBatch, normalize_batch

logger = logging.getLogger(__name__)

MERSENNE = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 64) - 1)  # "no shingle yet" in a signature under construction
ALGORITHM_VERSION = 1  # bump when any hash below changes: signatures of different versions never match

_U = np.uint64
_POLY = 0x9E3779B97F4A7C17  # odd, = 3 mod 4 (so x*(P-1) = 0 mod 2^64 only for x = 0 mod 2^63)
_LEN_SALT = _U(0xA0761D6478BD642F)  # mixes a segment's length into its hash
_WORD_SALT, _CJK_SALT, _SHORT_SALT, _FALLBACK_SALT = _U(0x1), _U(0x2), _U(0x3), _U(0x4)
_CHUNK_SHINGLES = 1024  # columns of the (num_perm x shingles) block: ~0.9 MB at 112 perms, fits L2 (4096 was faster alone, not in a 2-worker build)



# ------------------------------------------------------------------------------- per-process tables
_CHAR_VALUES: Optional[np.ndarray] = None
_CJK_BMP: Optional[np.ndarray] = None

_CJK_RANGES = (
    (0x1100, 0x11FF), (0x3005, 0x3007), (0x3040, 0x30FF), (0x3130, 0x318F), (0x31F0, 0x31FF),
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF),
    (0xF900, 0xFAFF), (0xFF66, 0xFF9F),
)  # Hangul Jamo, 々〆〇, kana, compatibility jamo, kana ext, Han ext A, Han, jamo ext, Hangul, Han compat, half-width kana
_CJK_SUPPLEMENTARY = (0x20000, 0x323AF)  # Han extensions B-H and compatibility supplement


def _tables() -> tuple[np.ndarray, np.ndarray]:
    global _CHAR_VALUES, _CJK_BMP
    if _CHAR_VALUES is None:
        _CHAR_VALUES = fmix64(np.arange(1 << 16, dtype=np.uint64) * _U(0x9FB21C651E98DF25) + _U(0x2545F4914F6CDD1D))
        cjk = np.zeros(1 << 16, dtype=bool)
        for lo, hi in _CJK_RANGES:
            cjk[lo : hi + 1] = True
        _CJK_BMP = cjk
    return _CHAR_VALUES, _CJK_BMP


_powers = PowerTable(_POLY)  # (P^k, P^-k) mod 2^64 for k < n, shared by all calls in a process


def _char_values(codes: np.ndarray) -> np.ndarray:
    values = np.take(_tables()[0], codes, mode="clip")
    if codes.size and codes.max() > 0xFFFF:
        big = codes > 0xFFFF
        values[big] = fmix64(codes[big].astype(np.uint64) ^ _U(0x5851F42D4C957F2D))
    return values


def _is_cjk(codes: np.ndarray) -> np.ndarray:
    cjk = np.take(_tables()[1], codes, mode="clip")
    if codes.size and codes.max() > 0xFFFF:
        cjk &= codes <= 0xFFFF
        cjk |= (codes >= _CJK_SUPPLEMENTARY[0]) & (codes <= _CJK_SUPPLEMENTARY[1])
    return cjk


# ------------------------------------------------------------------------------------- shingling
def _wrapping_cumsum(values: np.ndarray) -> np.ndarray:
    """Prefix sums of uint64 values mod 2^64. Summed as int64 (two's complement wraps to the same
    bits), which numpy does ~2x faster than uint64."""
    return np.cumsum(values.view(np.int64)).view(np.uint64)


def _segment_hashes(prefix: np.ndarray, first: np.ndarray, length: np.ndarray, salt: np.uint64) -> np.ndarray:
    """fmix64(poly(units[first:first+length]) + length*LEN_SALT + salt) from prefix sums."""
    ppow = _powers(len(prefix) + 1)[0]
    last = first + length - 1
    total = prefix[last].copy()
    has_before = first > 0
    total[has_before] -= prefix[first[has_before] - 1]
    total *= ppow[last]
    total += length.astype(np.uint64) * _LEN_SALT + salt
    return fmix64(total)


def _stream_shingles(units: np.ndarray, doc: np.ndarray, num_docs: int, n: int, salt: np.uint64):
    """Full n-grams and whole-stream segments of one stream (units in document order).

    Returns (ngram_hashes, ngram_docs, short_hashes per document or 0, has_full per document)."""
    count = np.bincount(doc, minlength=num_docs)
    short = np.zeros(num_docs, dtype=np.uint64)
    if units.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), short, np.zeros(num_docs, dtype=bool)
    qpow = _powers(units.size + 1)[1]
    prefix = _wrapping_cumsum(units * qpow[: units.size])  # sum of u_k * P^-k, wraps mod 2^64
    if units.size >= n:
        first = np.flatnonzero(doc[: units.size - n + 1] == doc[n - 1 :])
        grams = _segment_hashes(prefix, first, np.full(first.size, n, dtype=np.int64), salt)
        gram_docs = doc[first]
    else:
        grams, gram_docs = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    starts = np.concatenate(([0], np.cumsum(count)[:-1]))
    partial = np.flatnonzero((count > 0) & (count < n))
    if partial.size:
        short[partial] = _segment_hashes(prefix, starts[partial], count[partial], salt ^ _SHORT_SALT)
    return grams, gram_docs, short, count >= n


def _shingles(batch: NormalizedBatch, *, word_ngram: int, char_ngram: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The shingle hashes of every document of a batch, as parts of (hashes, doc ids), each part
    sorted by document. Every document has at least one shingle."""
    codes, num_docs = batch.codes, len(batch)
    seps = np.flatnonzero(codes == SEPARATOR)
    cjk = _is_cjk(codes)
    # Words: maximal runs of characters that are not CJK, space or a document separator.
    wpos = np.flatnonzero(~cjk & (codes != SPACE) & (codes != SEPARATOR))
    new_word = np.ones(wpos.size, dtype=bool)
    new_word[1:] = wpos[1:] != wpos[:-1] + 1
    word_first = np.flatnonzero(new_word)
    word_len = np.diff(np.append(word_first, wpos.size))
    if wpos.size:
        qpow = _powers(wpos.size + 1)[1]
        char_prefix = _wrapping_cumsum(_char_values(codes[wpos]) * qpow[: wpos.size])
        words = _segment_hashes(char_prefix, word_first, word_len, _WORD_SALT)
    else:
        words = np.zeros(0, np.uint64)
    word_doc = np.searchsorted(seps, wpos[word_first])
    cpos = np.flatnonzero(cjk)
    chars = _char_values(codes[cpos])
    char_doc = np.searchsorted(seps, cpos)

    w_grams, w_docs, w_short, w_full = _stream_shingles(words, word_doc, num_docs, word_ngram, _WORD_SALT)
    c_grams, c_docs, c_short, c_full = _stream_shingles(chars, char_doc, num_docs, char_ngram, _CJK_SALT)
    has_full = w_full | c_full
    parts = [(w_grams, w_docs), (c_grams, c_docs)]
    for short in (w_short, c_short):  # a short stream next to a full one adds its one shingle
        docs = np.flatnonzero(has_full & (short != 0))
        parts.append((short[docs], docs))
    fallback = np.flatnonzero(~has_full)  # no full n-gram anywhere: exactly one shingle
    if fallback.size:
        combined = w_short[fallback] * _U(0x9E3779B97F4A7C15) + c_short[fallback] + _FALLBACK_SALT
        parts.append((fmix64(combined), fallback))
    return parts


def shingle_hashes(normalized: str, *, word_ngram: int, char_ngram: int) -> np.ndarray:
    """Unique uint64 shingle hashes of an already normalized text (see the module docstring)."""
    codes = np.frombuffer(normalized.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint32)
    codes = codes[codes != SEPARATOR]
    batch = NormalizedBatch(codes=codes, starts=np.zeros(1, np.int64), ends=np.full(1, codes.size, np.int64))
    parts = _shingles(batch, word_ngram=word_ngram, char_ngram=char_ngram)
    return np.unique(np.concatenate([hashes for hashes, _ in parts]))


CJK_PATTERN = re.compile(
    "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in (*_CJK_RANGES, _CJK_SUPPLEMENTARY)) + "]"
)
"""The characters shingled by character n-grams (the same ranges as the vectorized path)."""


def reference_shingles(normalized: str, *, word_ngram: int = 5, char_ngram: int = 5) -> set[str]:
    """The shingling rule of the module docstring, written plainly with strings: the reference that
    `shingle_hashes` is tested against, and what the datasketch comparison in bench/ hashes."""
    cjk = "".join(CJK_PATTERN.findall(normalized))
    words = CJK_PATTERN.sub(" ", normalized).split()
    out = {" ".join(words[i : i + word_ngram]) for i in range(len(words) - word_ngram + 1)}
    out |= {"\x00" + cjk[i : i + char_ngram] for i in range(len(cjk) - char_ngram + 1)}
    full = bool(out)
    if 0 < len(words) < word_ngram and full:
        out.add(" ".join(words))
    if 0 < len(cjk) < char_ngram and full:
        out.add("\x00" + cjk)
    return out or {normalized}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sets of shingle hashes (1.0 for two empty sets)."""
    a, b = np.unique(a), np.unique(b)
    union = np.union1d(a, b).size
    return np.intersect1d(a, b, assume_unique=True).size / union if union else 1.0


# ---------------------------------------------------------------------------------------- MinHash
class MinHasher:
    """MinHash signatures (uint64[num_perm]) of original texts; normalizes inside. Picklable."""

    def __init__(self, *, num_perm: int, seed: int, word_ngram: int, char_ngram: int) -> None:
        if num_perm < 1 or word_ngram < 1 or char_ngram < 1:
            raise ValueError(f"MinHasher needs num_perm, word_ngram, char_ngram >= 1; got {num_perm}, {word_ngram}, {char_ngram}")
        self.num_perm, self.seed = num_perm, seed
        self.word_ngram, self.char_ngram = word_ngram, char_ngram
        gen = np.random.RandomState(seed)  # the same draws, in the same order, as datasketch/datatrove
        pairs = [(gen.randint(1, MERSENNE, dtype=np.uint64), gen.randint(0, MERSENNE, dtype=np.uint64)) for _ in range(num_perm)]
        self.a, self.b = np.array(pairs, dtype=np.uint64).T.copy()
        # Contiguous (num_perm, chunk) blocks of a and b: numpy's loops over two contiguous rows are
        # ~25% (multiply) and ~40% (add) faster than over a broadcast column.
        self._a_block = np.repeat(self.a[:, None], _CHUNK_SHINGLES, axis=1)
        self._b_block = np.repeat(self.b[:, None], _CHUNK_SHINGLES, axis=1)

    def permute(self, hashes: np.ndarray) -> np.ndarray:
        """(len(hashes), num_perm) permuted values ((a*h + b) mod 2^64) mod (2^61-1)."""
        t = hashes.astype(np.uint64)[:, None] * self.a
        t += self.b
        hi = t >> _U(61)
        t &= MERSENNE
        t += hi
        return t

    def _min_into(self, hashes: np.ndarray, docs: np.ndarray, out: np.ndarray) -> None:
        """out[d] = min(out[d], min over d's shingles of the permuted values); docs sorted.

        Blocks are (num_perm, chunk): permutations along rows so that the per-document minimum
        is a reduceat along the contiguous axis (measured ~3x faster than the transposed layout)."""
        width = min(_CHUNK_SHINGLES, hashes.size)
        a, b = self._a_block[:, :width], self._b_block[:, :width]
        block = np.empty((self.num_perm, width), dtype=np.uint64)
        high = np.empty_like(block)
        for lo in range(0, hashes.size, _CHUNK_SHINGLES):
            h, d = hashes[lo : lo + _CHUNK_SHINGLES], docs[lo : lo + _CHUNK_SHINGLES]
            t, hi = block[:, : h.size], high[:, : h.size]
            np.multiply(a[:, : h.size], h, out=t)  # wraps mod 2^64, as datasketch/datatrove in uint64
            t += b[:, : h.size]
            np.right_shift(t, _U(61), out=hi)
            t &= MERSENNE
            t += hi
            if d[0] == d[-1]:  # one document (sorted ids): a plain row minimum
                ids, mins = d[:1], t.min(axis=1)[None, :]
            else:
                heads = np.concatenate(([0], np.flatnonzero(d[1:] != d[:-1]) + 1))
                ids, mins = d[heads], np.minimum.reduceat(t, heads, axis=1).T
            np.minimum(out[ids], mins, out=mins)
            out[ids] = mins

    def signatures_of(self, batch: NormalizedBatch) -> np.ndarray:
        """(len(batch), num_perm) uint64 signatures of an already normalized batch."""
        out = np.full((len(batch), self.num_perm), MAX_HASH, dtype=np.uint64)
        for hashes, docs in _shingles(batch, word_ngram=self.word_ngram, char_ngram=self.char_ngram):
            if hashes.size:
                self._min_into(hashes, docs, out)
        return out

    def signature(self, text: str) -> np.ndarray:
        """uint64[num_perm] signature of one ORIGINAL text."""
        return self.signatures_of(normalize_batch([text]))[0]

    def signatures(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Signatures of many texts (rows of one array); much faster than one by one."""
        return list(self.signatures_of(normalize_batch(texts)))

    def keys_and_signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 exact keys, (n, num_perm) signatures), normalizing each text once."""
        batch = normalize_batch(texts)
        return batch.exact_keys(), self.signatures_of(batch)


def dedup_params(config) -> dict:
    """What `manifest["dedup"]` records: enough to reproduce or compare the deduplication."""
    b, r = config.dedup_num_bands, config.dedup_rows_per_band
    return {
        "method": "exact (normalized-text hash) + MinHash LSH near duplicates; first occurrence kept",
        "algorithm_version": ALGORITHM_VERSION,
        "normalization": "NFKC, casefold, punctuation (Unicode P*, ASCII punctuation) and control characters removed, whitespace collapsed",
        "exact_hash": "xxh3_64 of the normalized text (UTF-32-LE)",
        "shingles": {
            "word_ngram": config.dedup_word_ngram,
            "char_ngram": config.dedup_char_ngram,
            "char_scripts": "Han, Hiragana, Katakana, Hangul (character n-grams); everything else word n-grams",
        },
        "shingle_hash": "64-bit: polynomial mod 2^64 over per-character values + MurmurHash3 fmix64",
        "permutation": "((a*h + b) mod 2^64) mod (2^61-1), (a, b) from numpy RandomState(seed)",
        "num_perm": b * r,
        "num_bands": b,
        "rows_per_band": r,
        "threshold": round(lsh_threshold(b, r), 4),
        "seed": config.dedup_seed,
    }
