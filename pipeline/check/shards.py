"""The scan behind `cpt-prep check`: the structural rules of schemas.verify (the one implementation
cpt-train runs too) plus one 64-bit hash per document, computed on the same groups of the same read,
for the exact train/eval overlap and residual-duplicate rules (pipeline.check.dataset).

A document's hash covers its ids without the trailing separator: a polynomial hash mod 2^64 (odd
multiplier, length mixed in, splitmix64 finaliser), one multiply and one cumulative sum over the
tokens. Train/eval matches are confirmed by comparing the ids themselves, so a hash collision can
never produce a false failure there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from pipeline.dedup.lsh import PowerTable
from schemas.manifest import Manifest
from schemas.verify.dataset import verify_dataset
from schemas.verify.results import RuleResult
from schemas.verify.scan import SplitScan

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
_LEN_MULT = np.uint64(0xC2B2AE3D27D4EB4F)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_powers = PowerTable(int(_HASH_MULT))  # (M^k, M^-k) mod 2^64: row hashes from one prefix sum


_powers = PowerTable(int(_HASH_MULT))  # (M^k, M^-k) mod 2^64: row hashes from one prefix sum


def _prefix_at(csum: np.ndarray, index: np.ndarray) -> np.ndarray:
    """csum[index - 1], or 0 where index is 0 (an exclusive prefix sum without the copy)."""
    out = np.zeros(len(index), dtype=np.uint64)
    has = index > 0
    out[has] = csum[index[has] - 1]
    return out


def document_hashes(offsets: np.ndarray, values: np.ndarray, content_lengths: np.ndarray) -> np.ndarray:
    """uint64 hash of each row's content `values[offsets[i] : offsets[i] + content_lengths[i]]` (the
    ids without the trailing separator; `content_lengths` from schemas.verify.rows.inspect_documents)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    vals = values[lo:hi]
    starts = offsets[:-1] - lo
    content_end = starts + content_lengths
    # Polynomial hash of each row's content c_s..c_{e-1}: sum c_k * M^(e-1-k) mod 2^64, from one
    # prefix sum of c_k * M^-k: (S(e) - S(s)) * M^(e-1). Length mixed in, then splitmix64.
    ppow, qpow = _powers(hi - lo + 1)
    with np.errstate(over="ignore"):
        csum = np.multiply(vals, qpow[: hi - lo], dtype=np.uint64)
        np.cumsum(csum, out=csum)
        raw = (_prefix_at(csum, content_end) - _prefix_at(csum, starts)) * ppow[np.maximum(content_end - 1, 0)]
        return _mix64(raw ^ (content_lengths.astype(np.uint64) * _LEN_MULT))


@dataclass
class DatasetScan:
    """The scan of a whole data set: results, per-split measurements, open (memory-mapped) shards."""

    folder: Path
    results: list[RuleResult]
    splits: dict[str, SplitScan]
    tables: dict[str, pa.Table]
    drop_log: Optional[pa.Table]
    separator_id: int

    def document(self, shard: str, row: int) -> np.ndarray:
        """The ids of one document, separator included."""
        return np.asarray(self.tables[shard].column(0)[row].values.to_numpy(zero_copy_only=False))

    def content(self, shard: str, row: int) -> np.ndarray:
        """The ids of one document without its trailing separator (what the hashes cover)."""
        ids = self.document(shard, row)
        return ids[:-1] if len(ids) and ids[-1] == self.separator_id else ids


def scan_dataset(manifest: Manifest, folder: str | Path, *, checksums: bool = True) -> DatasetScan:
    """Every structural rule (schemas.verify.verify_dataset) and the document hashes, in one pass."""
    found = verify_dataset(manifest, folder, checksums=checksums, hash_documents=document_hashes, desc="cpt-prep check")
    return DatasetScan(folder=Path(folder), results=found.results, splits=found.splits, tables=found.tables, drop_log=found.drop_log,
                       separator_id=manifest.tokenizer.separator_id)
