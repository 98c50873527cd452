"""Duplicate candidates found on disk: per-chunk sorted hash files, merged per hash range.

The build's scan writes, for each chunk of records, every candidate's exact key and its band
hashes (`pipeline.dedup.lsh.band_hashes`) as sorted `.npy` arrays (`write_sorted_hashes`) into
the staging folder; `colliding_in_range` then reads one hash range `[lo, hi)` of every chunk's file
(memory-mapped, a `searchsorted` slice), sorts it and keeps the entries whose hash occurs at least
twice. Only those documents can be a duplicate of anything, so only they are held in memory when
the outcomes are decided (`Collisions`, in input order).

- Document ids are `chunk << 32 | candidate index in the chunk`: their order is input order.
- Exact keys and band hashes are separate hash spaces ("exact", "bands"), as the in-memory rule
  keeps a key map and one band table for all bands.
- Disk: 12 bytes per candidate for the exact key (8-byte hash + 4-byte index) and 12 per band
  (168 at 14 bands): ~180 bytes per document, removed before the manifest is written.
- Memory: a range merge holds ~`RANGE_ENTRIES` entries (24 bytes each while sorting, ~100 MB at
  the default); `Collisions` holds 12 bytes per colliding (document, band hash) or (document,
  exact key) entry, and the decisions 8 bytes per colliding hash per dedup scope; documents that
  collide with nothing cost nothing.
- Hashes are uniform 64-bit values (fmix64 / xxh3 outputs), so equal-width ranges are balanced.

Files are written to a temporary name and renamed, so a task that is run again (its worker died)
replaces them whole; they are only ever read by the build that wrote them, and every read checks
dtype, shape and that the two arrays of a file pair agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

KINDS = ("exact", "bands")
RANGE_ENTRIES = 1 << 22  # entries per range merge task (~100 MB while sorting): bounds its memory
_DOC_BITS = 32


def hash_file(folder: Path, chunk_index: int, kind: str, what: str) -> Path:
    return Path(folder) / f"{chunk_index:08d}.{kind}.{what}.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    """An .npy file written to a temporary name, then renamed: a reader sees the whole file or none."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        # The header through np.save, the data through the file's own write: numpy's tofile reports a
        # short write (a full disk) as a bare OSError without errno, which would not read as "disk full".
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(np.ascontiguousarray(array).data)
    os.replace(tmp, path)


def load_array(path: Path, dtype: np.dtype, *, mmap: bool = False) -> np.ndarray:
    """An array this build wrote, checked: 1-D of `dtype`, never unpickled."""
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if array.dtype != dtype or array.ndim != 1:
        raise ValueError(f"{path} holds {array.dtype} {array.shape}, expected 1-D {np.dtype(dtype)}")
    return array


def write_sorted_hashes(folder: Path, chunk_index: int, kind: str, hashes: np.ndarray) -> None:
    """Write one chunk's hashes, `(candidates, per_doc)` uint64, as a sorted hash file plus the
    candidate index of each entry (ties in candidate order)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.ndim == 1:
        hashes = hashes[:, None]
    n, per_doc = hashes.shape
    flat = hashes.reshape(-1)
    order = np.argsort(flat, kind="stable")
    save_array(hash_file(folder, chunk_index, kind, "hash"), flat[order])
    save_array(hash_file(folder, chunk_index, kind, "doc"), (order // per_doc).astype(np.uint32))


def read_chunk_hashes(folder: Path, chunk_index: int, kind: str, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sorted hashes, candidate index of each) of one chunk."""
    hashes = load_array(hash_file(folder, chunk_index, kind, "hash"), np.dtype(np.uint64), mmap=mmap)
    docs = load_array(hash_file(folder, chunk_index, kind, "doc"), np.dtype(np.uint32), mmap=mmap)
    if hashes.shape != docs.shape:
        raise ValueError(f"chunk {chunk_index} {kind}: {hashes.size} hashes but {docs.size} document indices")
    return hashes, docs


def hash_ranges(total_entries: int, *, range_entries: int = RANGE_ENTRIES) -> list[tuple[int, Optional[int]]]:
    """Equal-width ranges `[lo, hi)` of the 64-bit hash space (hi None = to the end), about
    `range_entries` entries each."""
    count = max(1, -(-total_entries // range_entries))
    bounds = [(r << 64) // count for r in range(count)]
    return [(lo, bounds[r + 1] if r + 1 < count else None) for r, lo in enumerate(bounds)]


def colliding_in_range(folder: str, kind: str, num_chunks: int, lo: int, hi: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """(document ids, hashes) of the entries of every chunk with a hash in `[lo, hi)` that occurs
    at least twice there (a task: one range of the hash space)."""
    hash_parts: list[np.ndarray] = []
    doc_parts: list[np.ndarray] = []
    bounds = np.array([lo, hi if hi is not None else 0], dtype=np.uint64)
    for c in range(num_chunks):
        hashes, docs = read_chunk_hashes(Path(folder), c, kind, mmap=True)
        i, j = np.searchsorted(hashes, bounds)
        if hi is None:
            j = hashes.size
        if j > i:
            hash_parts.append(np.array(hashes[i:j]))
            doc_parts.append(docs[i:j].astype(np.uint64) | np.uint64(c << _DOC_BITS))
    if not hash_parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    hashes = np.concatenate(hash_parts)
    docs = np.concatenate(doc_parts)
    order = np.argsort(hashes, kind="stable")
    hashes, docs = hashes[order], docs[order]
    same = hashes[1:] == hashes[:-1]
    keep = np.zeros(hashes.size, dtype=bool)
    keep[1:] |= same
    keep[:-1] |= same
    return docs[keep], hashes[keep]


class Collisions:
    """The colliding entries of the whole input, by document id, each hash replaced by a dense
    group number (`np.unique` order): what outcome decisions need, as flat arrays."""

    def __init__(self, exact: Sequence[tuple[np.ndarray, np.ndarray]], bands: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.exact_docs, self.exact_groups, self.num_exact_groups = _grouped(exact)
        self.band_docs, self.band_groups, self.num_band_groups = _grouped(bands)

    @property
    def nbytes(self) -> int:
        return self.exact_docs.nbytes + self.exact_groups.nbytes + self.band_docs.nbytes + self.band_groups.nbytes

    def for_chunk(self, chunk_index: int) -> tuple[dict[int, int], dict[int, list[int]]]:
        """For the candidates of one chunk (index in the chunk): the group of each colliding exact
        key, and the groups of each one's colliding band hashes."""
        bounds = np.array([chunk_index << _DOC_BITS, (chunk_index + 1) << _DOC_BITS], dtype=np.uint64)
        low_bits = np.uint64((1 << _DOC_BITS) - 1)
        i, j = np.searchsorted(self.exact_docs, bounds)
        exact = dict(zip((self.exact_docs[i:j] & low_bits).tolist(), self.exact_groups[i:j].tolist()))
        i, j = np.searchsorted(self.band_docs, bounds)
        bands: dict[int, list[int]] = {}
        for doc, group in zip((self.band_docs[i:j] & low_bits).tolist(), self.band_groups[i:j].tolist()):
            bands.setdefault(doc, []).append(group)
        return exact, bands


def _grouped(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(document ids sorted, group of each entry, number of groups) from `colliding_in_range` results."""
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint32), 0
    docs = np.concatenate([d for d, _ in parts])
    unique, groups = np.unique(np.concatenate([h for _, h in parts]), return_inverse=True)
    order = np.argsort(docs, kind="stable")
    return docs[order], groups.reshape(-1)[order].astype(np.uint32 if unique.size < 2**32 else np.int64), int(unique.size)
