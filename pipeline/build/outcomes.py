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

import numpy as np
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
    """Stored documents of one dedup scope, per collision group (`Collisions`: a colliding exact key
    or band hash): the first stored document id, -1 for none; 8 bytes per group."""

    def __init__(self, collisions: Collisions) -> None:
        self.exact = np.full(collisions.num_exact_groups, -1, dtype=np.int64)
        self.near = np.full(collisions.num_band_groups, -1, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return self.exact.nbytes + self.near.nbytes

    def exact_match(self, group: Optional[int]) -> Optional[int]:
        if group is None:
            return None
        doc = int(self.exact[group])
        return doc if doc >= 0 else None

    def query(self, groups: Sequence[int]) -> Optional[int]:
        """The earliest stored document sharing a band hash, or None."""
        if not groups:
            return None
        docs = self.near[groups]
        docs = docs[docs >= 0]
        return int(docs.min()) if docs.size else None

    def store(self, doc: int, exact_group: Optional[int], groups: Sequence[int]) -> None:
        if exact_group is not None and self.exact[exact_group] < 0:
            self.exact[exact_group] = doc
        if groups:
            near = self.near
            fresh = [g for g in groups if near[g] < 0]
            near[fresh] = doc


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
        self.origins: dict[int, tuple[int, int, int, int]] = {}  # stored colliding doc -> source, line, split code, exact group (-1: none)
        has_eval = "eval" in writers
        hash_split = has_eval and "eval" not in self.roles  # eval assigned by eval_fraction: splits interleave
        self._cross_only = data.decontaminate and not data.filter_duplicates and has_eval
        # Cross-only: store a split only if documents of the other split can still come after it.
        self._store = {"eval": True, "train": hash_split}
        if data.filter_duplicates:
            shared = _Seen(collisions) if data.decontaminate else None
            self._seen = {split: shared or _Seen(collisions) for split in _SPLITS}
        elif self._cross_only:
            self._seen = {split: _Seen(collisions) for split in _SPLITS}
        else:
            self._seen = {}
        self._accepted = {split: 0 for split in _SPLITS}  # kept so far, counted when decided

    @property
    def state_bytes(self) -> int:
        """Dedup state held in memory: the colliding entries, the per-group state of each scope, and
        ~150 bytes per stored colliding document (its provenance, a dict entry)."""
        scopes = {id(s): s for s in self._seen.values()}.values()
        return self.collisions.nbytes + sum(s.nbytes for s in scopes) + 150 * len(self.origins)

    def decide(self, chunk_index: int, sources: Sequence[int], lines: Sequence[int], scan: ScanRecord) -> list[tuple[int, str]]:
        """Decide the outcome of each record of one chunk, in input order; log and count the drops.

        Returns the kept records as `(index in the chunk, split)`, in order: `write` takes their
        token ids once they are encoded."""
        reasons = scan.reasons.tolist()
        is_eval = scan.is_eval.tolist()
        exact_colliding, band_colliding = self.collisions.for_chunk(chunk_index)
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
            exact_group = exact_colliding.get(c)
            bands = band_colliding.get(c, ())
            if exact_group is None and not bands:
                reason, origin = self._decide_alone(split)
            else:
                reason, origin = self._decide(base | c, source, line, split, exact_group, bands)
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

    def _decide(self, doc: int, source: int, line: int, split: str, exact_group: Optional[int], bands: Sequence[int]) -> tuple[Optional[str], Optional[Origin]]:
        """The serial rule for a colliding document (`exact_group` is None when only its bands collide)."""
        limit = self.limits[split]
        full = limit is not None and self._accepted[split] >= limit
        if self._cross_only:
            seen = self._seen["train" if split == "eval" else "eval"]  # only the other split matters
            match = seen.exact_match(exact_group)
            if match is None and not full:
                match = seen.query(bands)
        else:
            seen = self._seen.get(split)
            match = seen.exact_match(exact_group) if seen is not None else None
        if match is not None:
            return self._outcome(split, exact_group, match)
        if full:
            return "over_max_samples", None
        if not self._cross_only and seen is not None:
            match = seen.query(bands)
            if match is not None:
                return self._outcome(split, exact_group, match)
            self._remember(doc, source, line, split, exact_group)
            seen.store(doc, exact_group, bands)
        elif self._cross_only and self._store[split]:
            self._remember(doc, source, line, split, exact_group)
            self._seen[split].store(doc, exact_group, bands)
        self._accepted[split] += 1
        return None, None

    def _remember(self, doc: int, source: int, line: int, split: str, exact_group: Optional[int]) -> None:
        self.origins[doc] = (source, line, _SPLIT_CODES[split], -1 if exact_group is None else exact_group)

    def _outcome(self, split: str, exact_group: Optional[int], match: int) -> tuple[str, Origin]:
        """Same exact key as the match (same exact group): exact duplicate, else near."""
        source, line, split_code, match_group = self.origins[match]
        reason = "exact_duplicate" if exact_group is not None and match_group == exact_group else "near_duplicate"
        if split == "train" and split_code == _SPLIT_CODES["eval"]:
            reason = "overlaps_eval"
        return reason, (source, line, _SPLITS[split_code])

    def _drop(self, source_index: int, line: int, reason: str, origin: Optional[Origin] = None) -> None:
        self.dropped[reason] += 1
        self.drop_log.add(source_index, line, reason, origin)
