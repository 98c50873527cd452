"""MinHash LSH index: band hashes of signatures in one open-addressing table (numpy), first
occurrence wins. Used serially in input order by `cpt-prep build` (and by `cpt-prep check` to
re-check train/eval overlap). Re-exported by `pipeline.dedup.minhash`.

- Two documents are candidates when one of num_bands bands of rows_per_band signature rows is
  equal. Defaults 14 x 8 = 112 (FineWeb): threshold (1/b)^(1/r) ~ 0.72; P(caught) is 0.92 at
  Jaccard 0.8, 0.9996 at 0.9 and 0.054 at 0.5.
- Memory: 288-568 bytes per indexed document at 14 bands (measured 395 at 500,000); signatures
  are not stored.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_U = np.uint64
_M1, _M2 = _U(0xFF51AFD7ED558CCD), _U(0xC4CEB9FE1A85EC53)  # MurmurHash3 fmix64 constants


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection with full avalanche), in place on a uint64 array."""
    x ^= x >> _U(33)
    x *= _M1
    x ^= x >> _U(33)
    x *= _M2
    x ^= x >> _U(33)
    return x


class PowerTable:
    """(B^k, B^-k) mod 2^64 for k < n, for an odd base B: uint64 arithmetic wraps, which is the
    modulus, and an odd B has an inverse. Polynomial hashes of many segments come from one prefix
    sum with these tables (`pipeline.dedup.minhash` shingles, `pipeline.check.shards` row hashes).

    The tables grow geometrically and are kept for the process up to `max_kept` entries
    (2 x 32 MiB at 2^22; a 2 MiB chunk of text needs ~2^21). A larger request, from one huge
    document, is computed and returned but not kept: otherwise a 20 MB line would pin 512 MiB in
    the worker for the rest of the run."""

    def __init__(self, base: int, *, max_kept: int = 1 << 22) -> None:
        if base % 2 == 0:
            raise ValueError(f"PowerTable needs an odd base (invertible mod 2^64), got {base}")
        self.base = base % (1 << 64)
        self.max_kept = max_kept
        self._tables = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._tables[0]) >= n:
            return self._tables
        size = 1 << max(16, (n - 1).bit_length())
        p = np.full(size, self.base, dtype=np.uint64)
        q = np.full(size, pow(self.base, -1, 1 << 64), dtype=np.uint64)
        p[0] = q[0] = 1
        with np.errstate(over="ignore"):
            tables = (np.multiply.accumulate(p), np.multiply.accumulate(q))
        if size <= self.max_kept:
            self._tables = tables
        return tables


def lsh_threshold(num_bands: int, rows_per_band: int) -> float:
    """Jaccard similarity where a pair becomes more likely caught than not: ~(1/b)^(1/r)."""
    return (1.0 / num_bands) ** (1.0 / rows_per_band)


def _band_constants(num_bands: int, rows_per_band: int) -> tuple[np.ndarray, np.ndarray]:
    key = (num_bands, rows_per_band)
    if key not in _BAND_CONSTANTS:
        mult = fmix64(np.arange(1, rows_per_band + 1, dtype=np.uint64) * _U(0xD6E8FEB86659FD93)) | _U(1)
        _BAND_CONSTANTS[key] = (mult, np.arange(num_bands, dtype=np.uint64) * _U(0x9E3779B97F4A7C15))
    return _BAND_CONSTANTS[key]


_BAND_CONSTANTS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def band_keys(signatures: np.ndarray, *, num_bands: int, rows_per_band: int) -> np.ndarray:
    """(n, num_bands) uint64: one 64-bit hash per band of each signature (band index mixed in)."""
    mult, offsets = _band_constants(num_bands, rows_per_band)
    sig = np.asarray(signatures, dtype=np.uint64).reshape(-1, num_bands, rows_per_band)
    keys = (sig * mult).sum(axis=2, dtype=np.uint64)  # wraps mod 2^64
    keys += offsets
    return fmix64(keys)


def band_hashes(signatures: np.ndarray, *, num_bands: int, rows_per_band: int) -> np.ndarray:
    """`band_keys` with 0 replaced by 1 (0 marks an empty slot of the index): the band hashes both
    the in-memory index and the build's on-disk collision search (`pipeline.dedup.collisions`) use."""
    keys = band_keys(signatures, num_bands=num_bands, rows_per_band=rows_per_band)
    keys[keys == 0] = 1
    return keys


class NearDuplicateIndex:
    """LSH index of MinHash signatures that remembers, per band hash, the EARLIEST document.

    Band hashes live in one open-addressing hash table (numpy arrays: 8-byte hash + 4-byte row per
    slot, linear probing, at most MAX_LOAD full, doubled when it gets there), so memory per indexed
    document is num_bands x 12 / load + 8 bytes for the key: 288-568 bytes at 14 bands (measured:
    323 at 40,000 documents, 395 at 500,000), plus the old table for a moment while it grows.
    Signatures are not stored. Single calls probe through memoryviews (~30,000 documents/s);
    `add_if_new_batch` does the same work vectorized (~100,000 documents/s) with the same results.
    Keys are caller-chosen ints that fit int64.
    """

    MAX_LOAD = 0.6

    def __init__(self, *, num_bands: int, rows_per_band: int) -> None:
        self.num_bands, self.rows_per_band = num_bands, rows_per_band
        self._keys = np.zeros(1024, dtype=np.int64)  # row -> caller's key
        self._num_docs = 0
        self._used = 0
        self._allocate(1 << 14)

    def _allocate(self, capacity: int) -> None:
        self._hashes = np.zeros(capacity, dtype=np.uint64)  # 0 = empty slot
        self._rows = np.zeros(capacity, dtype=np.uint32)
        self._hv, self._rv = memoryview(self._hashes), memoryview(self._rows)
        self._mask = capacity - 1

    def __len__(self) -> int:
        return self._num_docs

    @property
    def nbytes(self) -> int:
        """Bytes of index state (hash table + keys), excluding unused key-array capacity."""
        return self._hashes.nbytes + self._rows.nbytes + 8 * self._num_docs

    def _bands(self, signatures: np.ndarray) -> np.ndarray:
        return band_hashes(signatures, num_bands=self.num_bands, rows_per_band=self.rows_per_band)

    # -- single documents (plain Python over memoryviews: ~1 us per band) --
    def _earliest_row(self, bands: list[int]) -> int:
        hv, rv, mask, best = self._hv, self._rv, self._mask, -1
        for h in bands:
            i = h & mask
            while True:
                slot = hv[i]
                if slot == h:
                    if best < 0 or rv[i] < best:
                        best = rv[i]
                    break
                if slot == 0:
                    break
                i = (i + 1) & mask
        return best

    def _insert_one(self, key: int, bands: list[int]) -> None:
        self._reserve(len(bands))
        row = int(self._new_rows(np.array([key], dtype=np.int64))[0])
        hv, rv, mask = self._hv, self._rv, self._mask
        for h in bands:
            i = h & mask
            while hv[i] != 0 and hv[i] != h:
                i = (i + 1) & mask
            if hv[i] == 0:  # an equal hash already there keeps its earlier row
                hv[i], rv[i] = h, row
                self._used += 1

    def query(self, signature: np.ndarray) -> Optional[int]:
        """Key of the earliest inserted document sharing a band with `signature`, or None."""
        row = self._earliest_row(self._bands(signature)[0].tolist())
        return None if row < 0 else int(self._keys[row])

    def insert(self, key: int, signature: np.ndarray) -> None:
        """Index `signature` under `key` (even if it matches an earlier document)."""
        self._insert_one(key, self._bands(signature)[0].tolist())

    def add_if_new(self, key: int, signature: np.ndarray) -> Optional[int]:
        """Query, then insert when nothing matched; returns the matching earlier key or None."""
        bands = self._bands(signature)[0].tolist()
        row = self._earliest_row(bands)
        if row >= 0:
            return int(self._keys[row])
        self._insert_one(key, bands)
        return None

    # -- batches (vectorized; the same results as one call per document, in order) --
    def add_if_new_batch(self, keys: Sequence[int], signatures: np.ndarray) -> list[Optional[int]]:
        """`add_if_new` for each (key, signature) in order, vectorized."""
        bands = self._bands(signatures)
        n, b = bands.shape
        found = self._find(bands.ravel()).reshape(n, b)
        rows = np.where(found >= 0, found, np.iinfo(np.int64).max).min(axis=1)
        match = np.where(rows < np.iinfo(np.int64).max, rows, -1)  # index row, -1 new, <= -2 batch doc
        # Documents sharing a band hash with another document of this batch need the serial rule.
        flat = bands.ravel()
        order = np.argsort(flat, kind="stable")
        same = flat[order[1:]] == flat[order[:-1]]
        contested = np.zeros(n, dtype=bool)
        contested[order[1:][same] // b] = True
        contested[order[:-1][same] // b] = True
        earliest: dict[int, int] = {}
        for i in np.flatnonzero(contested & (match < 0)).tolist():
            hits = [earliest[h] for h in bands[i].tolist() if h in earliest]
            if hits:
                match[i] = -2 - min(hits)
            else:
                for h in bands[i].tolist():
                    earliest.setdefault(h, i)
        new = np.flatnonzero(match == -1)
        self._reserve(new.size * b)
        new_rows = self._new_rows(np.asarray(keys, dtype=np.int64)[new])
        self._place(bands[new].ravel(), np.repeat(new_rows, b))
        doc_row = np.full(n, -1, dtype=np.int64)
        doc_row[new] = new_rows
        key_of = self._keys
        return [None if m == -1 else int(key_of[m] if m >= 0 else key_of[doc_row[-2 - m]]) for m in match.tolist()]

    def _find(self, hashes: np.ndarray) -> np.ndarray:
        """Row stored for each hash, or -1 (vectorized linear probing)."""
        out = np.full(hashes.size, -1, dtype=np.int64)
        pos = (hashes & np.uint64(self._mask)).astype(np.int64)
        active = np.arange(hashes.size)
        while active.size:
            p = pos[active]
            slot = self._hashes[p]
            hit = slot == hashes[active]
            out[active[hit]] = self._rows[p[hit]]
            active = active[(slot != 0) & ~hit]
            pos[active] = (pos[active] + 1) & self._mask
        return out

    def _place(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Insert hashes known to be absent and distinct (vectorized linear probing)."""
        pos = (hashes & np.uint64(self._mask)).astype(np.int64)
        active = np.arange(hashes.size)
        while active.size:
            p = pos[active]
            free = self._hashes[p] == 0
            cand, at = active[free], p[free]
            self._hashes[at] = hashes[cand]  # several candidates for one slot: one of them lands
            won = self._hashes[at] == hashes[cand]
            self._rows[at[won]] = rows[cand[won]]
            placed = np.zeros(active.size, dtype=bool)
            placed[np.flatnonzero(free)[won]] = True
            active = active[~placed]
            pos[active] = (pos[active] + 1) & self._mask
        self._used += hashes.size

    def _reserve(self, extra: int) -> None:
        if self._used + extra <= self.MAX_LOAD * (self._mask + 1):
            return
        capacity = self._mask + 1
        while self._used + extra > self.MAX_LOAD * capacity:
            capacity *= 2
        logger.debug("near-duplicate index grows to %d slots (%d band hashes)", capacity, self._used)
        full = np.flatnonzero(self._hashes)
        hashes, rows = self._hashes[full], self._rows[full]
        self._allocate(capacity)
        self._used = 0
        self._place(hashes, rows)

    def _new_rows(self, keys: np.ndarray) -> np.ndarray:
        need = self._num_docs + keys.size
        if need > self._keys.size:
            self._keys = np.concatenate((self._keys, np.zeros(max(need, 2 * self._keys.size) - self._keys.size, np.int64)))
        self._keys[self._num_docs : need] = keys
        rows = np.arange(self._num_docs, need, dtype=np.int64)
        self._num_docs = need
        return rows
