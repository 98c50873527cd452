"""Order-dependent outcomes of `cpt-prep build`, applied serially in input order (main process).

For each record, in this order: a filter reason from the worker (empty, too_short, invalid_utf8,
invalid_record) -> exact duplicate of a kept document -> `over_max_samples` once its split holds
max_train_samples / max_eval_samples documents -> MinHash LSH near duplicate of a kept document ->
kept. The first occurrence in input order is kept, so the result is deterministic.

Decontamination: eval inputs are read first. With filter_duplicates and decontaminate on, one index
holds every kept document of both splits: a training document matching an eval document is
`overlaps_eval`; with eval_fraction an eval document matching an earlier training document is an
ordinary duplicate, so no overlap remains either way. With decontaminate off, each split is
deduplicated on its own. With filter_duplicates off and decontaminate on, only cross-split matches
are dropped (duplicates inside a split are kept).

Every drop goes to the drop log (one row per dropped record, with the original's provenance for
duplicates and overlaps), and is counted; `num_records == kept + dropped` by construction.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa

from pipeline.build.chunks import Encoded, ScanRecord
from pipeline.dedup.collisions import Collisions
from pipeline.shards import ShardWriter
from schemas.config import DataConfig
from schemas.manifest import DROP_REASONS, FileInfo, drop_log_schema, sha256_file

Origin = tuple[int, int, str]  # (source_index, line, split) of a kept document
DROP_LOG_BATCH_ROWS = 65536  # rows buffered before an Arrow batch is written (~2 MB)
_SPLIT_CODES = {"train": 0, "eval": 1}
_SPLITS = ("train", "eval")


class _Seen:
    """Stored documents of one dedup scope, only those whose hashes collide with another
    document's: exact key -> first stored document id, band hash -> first stored document id."""

    def __init__(self) -> None:
        self.exact: dict[int, int] = {}
        self.near: dict[int, int] = {}

    def query(self, bands: Sequence[int]) -> Optional[int]:
        """The earliest stored document sharing a band hash, or None."""
        near = self.near
        hits = [near[h] for h in bands if h in near]
        return min(hits) if hits else None

    def store(self, doc: int, key: Optional[int], bands: Sequence[int]) -> None:
        if key is not None:
            self.exact.setdefault(key, doc)
        for h in bands:
            self.near.setdefault(h, doc)


class DropLogWriter:
    """Streams drop-log rows (schemas.manifest.drop_log_schema) into one Arrow stream file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.schema = drop_log_schema()
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._rows: list[tuple[int, int, str, int, int]] = []
        self.num_rows = 0

    def add(self, source_index: int, line: int, reason: str, origin: Optional[Origin] = None) -> None:
        self._rows.append((source_index, line, reason, origin[0] if origin else -1, origin[1] if origin else -1))
        self.num_rows += 1
        if len(self._rows) >= DROP_LOG_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows))
            arrays = [pa.array(col, type=f.type) for col, f in zip(columns, self.schema)]
            self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
            self._rows = []

    def close(self) -> FileInfo:
        self._flush()
        self._writer.close()
        self._sink.close()
        return FileInfo(path=self.path.name, num_rows=self.num_rows, num_bytes=self.path.stat().st_size, sha256=sha256_file(self.path))


class OutcomeDecider:
    """Gives every record its one outcome and writes kept documents to their split's shards.

    The rule is the serial one, per record in input order: exact duplicate of a stored document ->
    over max samples -> shares a band hash with a stored document (the earliest one is the
    original) -> kept and stored. A document whose exact key and band hashes collide with no other
    document's (`pipeline.dedup.collisions.Collisions`) can match nothing, so it is decided without
    a lookup and never stored: the state here holds colliding documents only."""

    def __init__(self, *, data: DataConfig, roles: Sequence[str], writers: dict[str, ShardWriter], drop_log: DropLogWriter, collisions: Collisions) -> None:
        self.data = data
        self.roles = list(roles)
        self.writers = writers
        self.drop_log = drop_log
        self.collisions = collisions
        self.limits = {"train": data.max_train_samples, "eval": data.max_eval_samples}
        self.num_records = 0
        self.kept: dict[str, int] = {split: 0 for split in writers}
        self.dropped: dict[str, int] = collections.Counter()
        self.records_per_source: dict[int, int] = collections.Counter()
        self.invalid_records_per_source: dict[int, int] = collections.Counter()
        self.origins: dict[int, tuple[int, int, int, int]] = {}  # stored colliding doc -> source, line, split code, key
        has_eval = "eval" in writers
        hash_split = has_eval and "eval" not in self.roles  # eval assigned by eval_fraction: splits interleave
        self._cross_only = data.decontaminate and not data.filter_duplicates and has_eval
        # Cross-only: store a split only if documents of the other split can still come after it.
        self._store = {"eval": True, "train": hash_split}
        if data.filter_duplicates:
            shared = _Seen() if data.decontaminate else None
            self._seen = {split: shared or _Seen() for split in _SPLITS}
        elif self._cross_only:
            self._seen = {split: _Seen() for split in _SPLITS}
        else:
            self._seen = {}
        self._accepted = {split: 0 for split in _SPLITS}  # kept so far, counted when decided

    @property
    def state_bytes(self) -> int:
        """Dedup state held in memory: the colliding entries, plus ~100 bytes per dict entry."""
        entries = len(self.origins) + sum(len(s.exact) + len(s.near) for s in {id(s): s for s in self._seen.values()}.values())
        return self.collisions.nbytes + 100 * entries

    def decide(self, chunk_index: int, sources: Sequence[int], lines: Sequence[int], scan: ScanRecord) -> list[tuple[int, str]]:
        """Decide the outcome of each record of one chunk, in input order; log and count the drops.

        Returns the kept records as `(index in the chunk, split)`, in order: `write` takes their
        token ids once they are encoded."""
        reasons = scan.reasons.tolist()
        is_eval = scan.is_eval.tolist()
        exact_colliding, band_colliding = self.collisions.for_chunk(chunk_index)
        keys = scan.keys
        base = chunk_index << 32
        kept: list[tuple[int, str]] = []
        c = 0  # candidate index in the chunk
        for i, code in enumerate(reasons):
            source, line = sources[i], lines[i]
            self.num_records += 1
            self.records_per_source[source] += 1
            if code:
                reason = DROP_REASONS[code - 1]
                if reason == "invalid_record":
                    self.invalid_records_per_source[source] += 1
                self._drop(source, line, reason)
                continue
            split = "eval" if self.roles[source] == "eval" or is_eval[c] else "train"
            key = int(keys[c]) if c in exact_colliding else None
            bands = band_colliding.get(c, ())
            if key is None and not bands:
                reason, origin = self._decide_alone(split)
            else:
                reason, origin = self._decide(base | c, source, line, split, key, bands, int(keys[c]))
            if reason is not None:
                self._drop(source, line, reason, origin)
            else:
                self.kept[split] += 1
                kept.append((i, split))
            c += 1
        return kept

    def write(self, sources: Sequence[int], lines: Sequence[int], kept: Sequence[tuple[int, str]], encoded: Encoded) -> None:
        """Write the kept records of one chunk (`decide`'s result) with their token ids."""
        offsets = encoded.offsets.tolist()
        for k, (i, split) in enumerate(kept):
            self.writers[split].write(encoded.ids[offsets[k] : offsets[k + 1]], sources[i], lines[i])

    def _decide_alone(self, split: str) -> tuple[Optional[str], Optional[Origin]]:
        """A document that collides with no other: kept unless its split is full."""
        limit = self.limits[split]
        if limit is not None and self._accepted[split] >= limit:
            return "over_max_samples", None
        self._accepted[split] += 1
        return None, None

    def _decide(self, doc: int, source: int, line: int, split: str, key: Optional[int], bands: Sequence[int], own_key: int) -> tuple[Optional[str], Optional[Origin]]:
        """The serial rule for a colliding document (`key` is None when only its bands collide)."""
        limit = self.limits[split]
        full = limit is not None and self._accepted[split] >= limit
        if self._cross_only:
            seen = self._seen["train" if split == "eval" else "eval"]  # only the other split matters
            match = seen.exact.get(key) if key is not None else None
            if match is None and not full:
                match = seen.query(bands)
        else:
            seen = self._seen.get(split)
            match = seen.exact.get(key) if seen is not None and key is not None else None
        if match is not None:
            return self._outcome(split, own_key, match)
        if full:
            return "over_max_samples", None
        if not self._cross_only and seen is not None:
            match = seen.query(bands)
            if match is not None:
                return self._outcome(split, own_key, match)
            self._remember(doc, source, line, split, own_key)
            seen.store(doc, key, bands)
        elif self._cross_only and self._store[split]:
            self._remember(doc, source, line, split, own_key)
            self._seen[split].store(doc, key, bands)
        self._accepted[split] += 1
        return None, None

    def _remember(self, doc: int, source: int, line: int, split: str, key: int) -> None:
        self.origins[doc] = (source, line, _SPLIT_CODES[split], key)

    def _outcome(self, split: str, key: int, match: int) -> tuple[str, Origin]:
        source, line, split_code, match_key = self.origins[match]
        reason = "exact_duplicate" if match_key == key else "near_duplicate"
        if split == "train" and split_code == _SPLIT_CODES["eval"]:
            reason = "overlaps_eval"
        return reason, (source, line, _SPLITS[split_code])

    def _drop(self, source_index: int, line: int, reason: str, origin: Optional[Origin] = None) -> None:
        self.dropped[reason] += 1
        self.drop_log.add(source_index, line, reason, origin)
