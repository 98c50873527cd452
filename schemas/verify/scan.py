"""One pass over every file a manifest lists: the structural rules of a data set's shards.

Rules, in order (`ROW_RULES`): each file listed once; present; its recorded size; its recorded
sha256 (unless `checksums` is off); a readable Arrow stream with the shard schema and the recorded
token dtype; every document ends with the separator; no control token inside a document; every id
below the vocabulary; provenance (source_index names a listed input, line >= 1); the shard's
documents and tokens as recorded.

Invariants and costs:
- Token ids are never turned into Python lists (schemas.verify.rows). The sha256 of each file
  (hashlib, ~1 GB/s on one core) is usually the dominant cost; the row rules read the same bytes
  memory-mapped, from the page cache the hash has just filled.
- Every failing shard gets its own result naming the shard and its first bad row (0-based), with
  up to `MAX_EXAMPLE_ROWS` rows listed; rules without a failure get one `pass` result.
- A caller that needs per-document hashes (cpt-prep check: exact overlap, residual duplicates)
  passes `hash_documents`; it runs on the same groups of the same read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from schemas.errors import ManifestError
from schemas.manifest import (
    SHARD_COLUMNS,
    SPLITS,
    Manifest,
    open_shard,
    resolve_path,
    sha256_file,
    token_dtype_for_vocab,
)
from schemas.verify.results import FAIL, PASS, Failures, RuleResult
from schemas.verify.rows import inspect_documents, iter_groups, provenance_key

logger = logging.getLogger(__name__)

MAX_EXAMPLE_ROWS = 5
# hash_documents(offsets, values, content_lengths) -> one uint64 per row (pipeline.check.shards)
DocumentHasher = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class SplitScan:
    """What was measured in one split's readable shards."""

    num_documents: int = 0
    num_tokens: int = 0
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    tokens_by_source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hashes: list[np.ndarray] = field(default_factory=list)  # per document, only when the scan got hash_documents
    shard_rows: list[tuple[str, int, int]] = field(default_factory=list)  # (shard, first global index, rows)
    record_keys: list[np.ndarray] = field(default_factory=list)  # provenance_key(source_index, line) per document
    complete: bool = True  # every listed shard was read

    def add_lengths(self, lengths: np.ndarray) -> None:
        counts = np.bincount(lengths)
        if len(counts) > len(self.length_counts):
            counts[: len(self.length_counts)] += self.length_counts
            self.length_counts = counts
        else:
            self.length_counts[: len(counts)] += counts

    def add_sources(self, sources: np.ndarray, tokens: np.ndarray) -> None:
        counts = np.bincount(sources.astype(np.int64), weights=tokens).astype(np.int64)
        if len(counts) > len(self.tokens_by_source):
            counts[: len(self.tokens_by_source)] += self.tokens_by_source
            self.tokens_by_source = counts
        else:
            self.tokens_by_source[: len(counts)] += counts

    def locate(self, index: int) -> tuple[str, int]:
        """(shard, row) of the split's `index`-th readable document."""
        for shard, first, rows in self.shard_rows:
            if first <= index < first + rows:
                return shard, index - first
        raise IndexError(index)



@dataclass
class ShardScan:
    """What one pass over the listed files found: results, per-split measurements, open shards."""

    results: list[RuleResult]
    splits: dict[str, SplitScan]
    tables: dict[str, pa.Table]  # memory-mapped, by relative path


ROW_RULES = ("shard_listed_once", "shard_present", "shard_size", "shard_sha256", "shard_readable", "token_dtype", "separator_at_end",
              "no_control_token_inside", "ids_below_vocab", "provenance", "shard_totals")
_PASS_TEXT = {
    "shard_listed_once": "each of {n} listed files is listed once",
    "shard_present": "all {n} listed files are present",
    "shard_size": "all {n} present files have their recorded size",
    "shard_sha256": "all {n} present files match their recorded sha256",
    "shard_readable": "all {n} shards are readable Arrow streams with the shard schema, every row valid",
    "token_dtype": "all {n} shards store ids as the recorded token dtype",
    "separator_at_end": "every document of {n} shards ends with the separator",
    "no_control_token_inside": "no control token inside any document of {n} shards",
    "ids_below_vocab": "every id of {n} shards is below the vocabulary size",
    "provenance": "every row of {n} shards points at a listed input and a line >= 1",
    "shard_totals": "documents and tokens of {n} shards match the manifest",
}


def _rows_text(rows: np.ndarray, row_base: int = 0) -> str:
    shown = ", ".join(str(int(r) + row_base) for r in rows[:MAX_EXAMPLE_ROWS])
    return shown + (", ..." if len(rows) > MAX_EXAMPLE_ROWS else "")


def scan_shards(manifest: Manifest, folder: str | Path, *, checksums: bool = True,
                hash_documents: Optional[DocumentHasher] = None, desc: str = "verify shards") -> ShardScan:
    """Check every listed file and every row; measure lengths and sources (and hashes, if asked)."""
    folder = Path(folder)
    tok = manifest.tokenizer
    f = Failures()
    splits = {s: SplitScan() for s in SPLITS}
    tables: dict[str, pa.Table] = {}
    lut = np.zeros(tok.vocab_size + 1, dtype=bool)
    lut[[i for i in tok.control_token_ids if 0 <= i < tok.vocab_size]] = True
    num_inputs = len(manifest.inputs)

    listed = [(split, sh) for split, sh in manifest.all_shards()]
    if manifest.drop_log is not None:
        listed.append((None, manifest.drop_log))
    seen: dict[object, tuple[Optional[str], str]] = {}
    for split, info in tqdm(listed, desc=desc, unit="file", disable=None, leave=False):
        where = dict(split=split, shard=info.path)
        try:
            full = resolve_path(folder, info.path)
        except ManifestError as exc:
            f.fail("shard_present", str(exc), **where)
            splits.get(split, SplitScan()).complete = False
            continue
        # The same file (by resolved path) or the same recorded content listed twice: every document
        # in it would be trained twice per epoch.
        again = seen.get(full) or seen.get(("sha256", info.sha256))
        if again is not None:
            how = "is listed again" if again[1] == info.path else f"has the same sha256 as {again[1]}"
            f.fail("shard_listed_once", f"{info.path} (split {split or 'drop log'}) {how}, already listed in split {again[0] or 'drop log'}; "
                   "its documents would be read twice, rebuild with `cpt-prep build` or restore the manifest", **where)
            if split:
                splits[split].complete = False
            continue
        seen[full] = seen[("sha256", info.sha256)] = (split, info.path)
        f.ok("shard_listed_once")
        if not full.is_file():
            f.fail("shard_present", f"{info.path} is missing from {folder}; rebuild with `cpt-prep build` or restore the file", **where)
            if split:
                splits[split].complete = False
            continue
        f.ok("shard_present")
        size = full.stat().st_size
        if size != info.num_bytes:
            f.fail("shard_size", f"{info.path} has {size:,} bytes, the manifest records {info.num_bytes:,}; the file was altered or truncated",
                   value=size, threshold=info.num_bytes, **where)
        else:
            f.ok("shard_size")
        if checksums:
            digest = sha256_file(full)
            if digest != info.sha256:
                f.fail("shard_sha256", f"{info.path} sha256 {digest[:16]}... differs from the recorded {info.sha256[:16]}...; the file was altered, rebuild or restore it",
                       value=digest, threshold=info.sha256, **where)
            else:
                f.ok("shard_sha256")
        if split is None:
            continue  # the drop log is read by read_drop_log
        table = _open_table(full, info.path, manifest.token_dtype, f, where)
        if table is None:
            splits[split].complete = False
            continue
        tables[info.path] = table
        _scan_table(table, info, split, splits[split], manifest, lut, num_inputs, f, hash_documents)

    results = [RuleResult("schema_version", PASS, f"schema_version {manifest.schema_version} is supported", value=manifest.schema_version)]
    skipped = {}
    if not checksums:
        skipped["shard_sha256"] = "sha256 not verified (--no-checksums)"
    if not num_inputs:
        skipped["provenance"] = "the manifest lists no inputs; source_index not checked"
    results += f.finish(ROW_RULES, _PASS_TEXT, skipped=skipped)
    results += _dataset_dtype_result(manifest)
    return ShardScan(results=results, splits=splits, tables=tables)


def _open_table(full: Path, rel: str, token_dtype: str, f: Failures, where: dict) -> Optional[pa.Table]:
    try:
        table = open_shard(full)
        table.validate(full=True)
    except ManifestError as exc:
        f.fail("shard_readable", str(exc), **where)
        return None
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        f.fail("shard_readable", f"{rel} has invalid rows ({str(exc).splitlines()[0][:120]}); rebuild or restore it", **where)
        return None
    schema = table.schema
    ids_type = schema.field("input_ids").type if "input_ids" in schema.names else None
    if tuple(schema.names) != SHARD_COLUMNS or not pa.types.is_list(ids_type) or not pa.types.is_unsigned_integer(ids_type.value_type) \
            or not all(pa.types.is_integer(schema.field(c).type) for c in SHARD_COLUMNS[1:]):
        f.fail("shard_readable", f"{rel} has schema {schema.to_string(show_schema_metadata=False).replace(chr(10), '; ')}, expected columns "
               f"{list(SHARD_COLUMNS)} with input_ids a list of unsigned integers; rebuild it with `cpt-prep build`", **where)
        return None
    for c in SHARD_COLUMNS:
        if table.column(c).null_count:
            f.fail("shard_readable", f"{rel} has {table.column(c).null_count} null values in column {c}; rebuild it", **where)
            return None
    f.ok("shard_readable")
    actual = str(ids_type.value_type)
    if actual != token_dtype:
        f.fail("token_dtype", f"{rel} stores ids as {actual}, the manifest records {token_dtype}; rebuild the shard or fix the manifest",
               value=actual, threshold=token_dtype, **where)
    else:
        f.ok("token_dtype")
    return table


def _scan_table(table: pa.Table, info, split: str, scan: SplitScan, manifest: Manifest, lut: np.ndarray, num_inputs: int,
                f: Failures, hash_documents: Optional[DocumentHasher]) -> None:
    tok = manifest.tokenizer
    where = dict(split=split, shard=info.path)
    first_index = scan.num_documents
    rows = tokens = 0
    missing, ctrl, ctrl_ids, over, bad_src, bad_line = [], [], [], [], [], []
    max_id = 0
    for row0, offsets, values, sources, lines in iter_groups(table):
        d = inspect_documents(offsets, values, separator_id=tok.separator_id, vocab_size=tok.vocab_size, control_lut=lut)
        lengths = np.diff(offsets)
        missing.append(d.missing_separator + row0)
        ctrl.append(d.control_inside + row0)
        ctrl_ids.append(d.control_ids)
        over.append(d.over_vocab + row0)
        max_id = max(max_id, d.max_id)
        if num_inputs:
            bad_src.append(np.flatnonzero(sources >= num_inputs) + row0)
        bad_line.append(np.flatnonzero(lines < 1) + row0)
        scan.add_lengths(d.content_lengths)
        scan.add_sources(sources, lengths)
        scan.record_keys.append(provenance_key(sources, lines))
        if hash_documents is not None:
            scan.hashes.append(hash_documents(offsets, values, d.content_lengths))
        rows += len(lengths)
        tokens += int(offsets[-1] - offsets[0])
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    missing, ctrl, ctrl_ids, over, bad_src, bad_line = map(cat, (missing, ctrl, ctrl_ids, over, bad_src, bad_line))
    scan.num_documents += rows
    scan.num_tokens += tokens
    scan.shard_rows.append((info.path, first_index, rows))

    def report(rule: str, bad: np.ndarray, text: str, **kw) -> None:
        if len(bad):
            f.fail(rule, f"{info.path}: {len(bad):,} of {rows:,} documents {text} (rows {_rows_text(bad)})", row=int(bad[0]), **kw, **where)
        else:
            f.ok(rule)

    report("separator_at_end", missing, f"do not end with the separator {tok.separator_token!r} (id {tok.separator_id}); rebuild with `cpt-prep build`",
           value=len(missing), threshold=0)
    report("no_control_token_inside", ctrl, f"hold a control token inside (first: id {int(ctrl_ids[0]) if len(ctrl_ids) else ''}); "
           "text that spells a special token must be encoded as plain text, rebuild with `cpt-prep build`", value=len(ctrl), threshold=0)
    report("ids_below_vocab", over, f"hold ids >= the vocabulary size {tok.vocab_size:,} (largest id {max_id:,}); the shards were made with "
           "another tokenizer or are corrupt", value=max_id, threshold=tok.vocab_size - 1)
    bad_prov = np.union1d(bad_src, bad_line)
    report("provenance", bad_prov, f"have a source_index outside the {num_inputs} listed inputs or a line < 1", value=len(bad_prov), threshold=0)
    if rows != info.num_documents or tokens != info.num_tokens:
        f.fail("shard_totals", f"{info.path} holds {rows:,} documents and {tokens:,} tokens, the manifest records {info.num_documents:,} "
               f"and {info.num_tokens:,}; the manifest or the shard was edited, rebuild",
               value={"documents": rows, "tokens": tokens}, threshold={"documents": info.num_documents, "tokens": info.num_tokens}, **where)
    else:
        f.ok("shard_totals")


def _dataset_dtype_result(manifest: Manifest) -> list[RuleResult]:
    need = token_dtype_for_vocab(manifest.tokenizer.vocab_size)
    if manifest.token_dtype == "uint16" and need == "uint32":
        return [RuleResult("token_dtype", FAIL, f"manifest token_dtype uint16 cannot hold a vocabulary of {manifest.tokenizer.vocab_size:,} ids; "
                           "rebuild with `cpt-prep build`", value="uint16", threshold=need)]
    return []
