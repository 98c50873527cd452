"""Structural checks of `cpt-prep check`: files, rows and token ids of every shard, the manifest's
totals and accounting, and exact train/eval overlap, in one pass over memory-mapped shards.

Invariants and costs:
- Token ids are never turned into Python lists: each group of record batches (up to
  `GROUP_TOKENS` = 4M tokens) is checked with a handful of vectorised numpy passes over the flat
  `values` buffer and the `offsets` of the list column (separator at the end, control tokens
  inside, ids >= vocab, lengths, one 64-bit hash per document). The sha256 of each file is
  usually the dominant cost (hashlib, ~1 GB/s).
- A document's hash covers its ids without the trailing separator: a polynomial hash mod 2^64
  (odd multiplier, length mixed in, splitmix64 finaliser). Train/eval matches are confirmed by
  comparing the ids themselves, so a hash collision can never produce a false failure there.
- Every failing shard gets its own result naming the shard and its first bad row (0-based), with
  up to `MAX_EXAMPLE_ROWS` rows listed; rules without a failure get one `pass` result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipeline.check.rules import FAIL, PASS, SKIP, RuleResult
from pipeline.dedup.lsh import PowerTable
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

logger = logging.getLogger(__name__)

GROUP_TOKENS = 1 << 22  # tokens per vectorised group: ~16-64 MB of temporaries, amortises numpy call overhead
MAX_EXAMPLE_ROWS = 5
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
_LEN_MULT = np.uint64(0xC2B2AE3D27D4EB4F)


# ------------------------------------------------------------------------------- vectorised core
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_powers = PowerTable(int(_HASH_MULT))  # (M^k, M^-k) mod 2^64: row hashes from one prefix sum


@dataclass
class DocumentFindings:
    """What `inspect_documents` found in a group of rows (row numbers relative to the group)."""

    content_lengths: np.ndarray  # tokens per row without a trailing separator
    hashes: np.ndarray  # uint64 per row, of the ids without a trailing separator
    missing_separator: np.ndarray  # rows whose last id is not the separator (or that are empty)
    control_inside: np.ndarray  # rows with a control token anywhere but the final separator position
    control_ids: np.ndarray  # the first offending control id of each row in control_inside
    over_vocab: np.ndarray  # rows holding an id >= vocab_size
    max_id: int  # the largest id among those >= the lowest control id (so it includes any id >= vocab_size); -1 if none


def provenance_key(source_index: np.ndarray, line: np.ndarray) -> np.ndarray:
    """One uint64 per (input, line): the input index in the top 24 bits, the line in the low 40."""
    return (source_index.astype(np.uint64) << np.uint64(40)) | (line.astype(np.uint64) & np.uint64((1 << 40) - 1))


def rows_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Row of each flat value position (empty rows never own a position)."""
    return np.searchsorted(offsets, positions, side="right") - 1


def _prefix_at(csum: np.ndarray, index: np.ndarray) -> np.ndarray:
    """csum[index - 1], or 0 where index is 0 (an exclusive prefix sum without the copy)."""
    out = np.zeros(len(index), dtype=np.uint64)
    has = index > 0
    out[has] = csum[index[has] - 1]
    return out


def inspect_documents(offsets: np.ndarray, values: np.ndarray, *, separator_id: int, vocab_size: int,
                      control_lut: np.ndarray) -> DocumentFindings:
    """Check and hash rows `values[offsets[i]:offsets[i+1]]`. `control_lut[id]` is True for control ids
    (length vocab_size + 1; ids >= vocab_size are looked up at index vocab_size).

    Three passes over the tokens: one comparison (ids >= the lowest control id: every control
    token and every id beyond the vocabulary, a few per document, then examined one by one), one
    multiply and one cumulative sum for the hashes; everything else is per document."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    lo, hi = int(offsets[0]), int(offsets[-1])
    vals = values[lo:hi]
    rel = offsets - lo
    starts, ends = rel[:-1], rel[1:]
    lengths = ends - starts
    nonempty = lengths > 0
    last = np.full(n, -1, dtype=np.int64)
    last[nonempty] = vals[ends[nonempty] - 1]
    has_sep = last == separator_id
    content_end = ends - has_sep
    content_lengths = content_end - starts

    lowest = min(int(np.argmax(control_lut)) if control_lut[:vocab_size].any() else vocab_size, vocab_size)
    if lowest > np.iinfo(vals.dtype).max:
        cand = np.zeros(0, dtype=np.int64)
    else:
        cand = np.flatnonzero(vals >= vals.dtype.type(lowest))
    cand_ids = vals[cand].astype(np.int64)
    over = cand[cand_ids >= vocab_size]
    is_ctrl = control_lut[np.minimum(cand_ids, vocab_size)]
    final = ends[has_sep] - 1  # sorted positions of the separators that end their documents
    if len(final) and len(cand):
        at = np.minimum(np.searchsorted(final, cand), len(final) - 1)
        is_ctrl &= final[at] != cand
    ctrl_pos = cand[is_ctrl]
    ctrl_rows, first = np.unique(rows_of(rel, ctrl_pos), return_index=True)

    # Polynomial hash of each row's content c_s..c_{e-1}: sum c_k * M^(e-1-k) mod 2^64, from one
    # prefix sum of c_k * M^-k: (S(e) - S(s)) * M^(e-1). Length mixed in, then splitmix64.
    ppow, qpow = _powers(hi - lo + 1)
    with np.errstate(over="ignore"):
        csum = np.multiply(vals, qpow[: hi - lo], dtype=np.uint64)
        np.cumsum(csum, out=csum)
        raw = (_prefix_at(csum, content_end) - _prefix_at(csum, starts)) * ppow[np.maximum(content_end - 1, 0)]
        hashes = _mix64(raw ^ (content_lengths.astype(np.uint64) * _LEN_MULT))
    return DocumentFindings(
        content_lengths=content_lengths,
        hashes=hashes,
        missing_separator=np.flatnonzero(~has_sep),
        control_inside=ctrl_rows,
        control_ids=vals[ctrl_pos[first]].astype(np.int64) if len(ctrl_pos) else np.zeros(0, dtype=np.int64),
        over_vocab=np.unique(rows_of(rel, over)),
        max_id=int(cand_ids.max(initial=-1)),
    )


def _group_arrays(batches: list[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offsets from 0, values, source_index, line) of consecutive batches, joined."""
    offs, vals, srcs, lines = [], [], [], []
    base = 0
    for b in batches:
        col = b.column(0)
        o = col.offsets.to_numpy().astype(np.int64)
        vals.append(col.values.to_numpy(zero_copy_only=False)[o[0]:o[-1]])
        offs.append(o[:-1] - o[0] + base)
        base += int(o[-1] - o[0])
        srcs.append(b.column(1).to_numpy(zero_copy_only=False))
        lines.append(b.column(2).to_numpy(zero_copy_only=False))
    offs.append(np.array([base], dtype=np.int64))
    if len(batches) == 1:
        return np.concatenate(offs), vals[0], srcs[0], lines[0]
    return np.concatenate(offs), np.concatenate(vals), np.concatenate(srcs), np.concatenate(lines)


def iter_groups(table: pa.Table) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, offsets, values, source_index, line) per group of consecutive record batches
    holding about GROUP_TOKENS tokens; a group of one batch is zero-copy."""
    pending: list[pa.RecordBatch] = []
    pending_tokens = 0
    row = 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        offsets = batch.column(0).offsets
        pending_tokens += offsets[-1].as_py() - offsets[0].as_py()
        if pending_tokens >= GROUP_TOKENS:
            yield (row, *_group_arrays(pending))
            row += sum(b.num_rows for b in pending)
            pending, pending_tokens = [], 0
    if pending:
        yield (row, *_group_arrays(pending))


# ------------------------------------------------------------------------------------- the scan
@dataclass
class SplitScan:
    """What was measured in one split's readable shards."""

    num_documents: int = 0
    num_tokens: int = 0
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    tokens_by_source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hashes: list[np.ndarray] = field(default_factory=list)
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
class DatasetScan:
    """The scan of a whole data set: results, per-split measurements, open (memory-mapped) shards."""

    folder: Path
    results: list[RuleResult]
    splits: dict[str, SplitScan]
    tables: dict[str, pa.Table]

    separator_id: int

    def document(self, shard: str, row: int) -> np.ndarray:
        """The ids of one document, separator included."""
        return np.asarray(self.tables[shard].column(0)[row].values.to_numpy(zero_copy_only=False))

    def content(self, shard: str, row: int) -> np.ndarray:
        """The ids of one document without its trailing separator (what the hashes cover)."""
        ids = self.document(shard, row)
        return ids[:-1] if len(ids) and ids[-1] == self.separator_id else ids


class _Failures:
    """Collects failures per rule; rules that never failed get one pass (or skip) result."""

    def __init__(self) -> None:
        self.results: list[RuleResult] = []
        self.checked: dict[str, int] = {}

    def ok(self, rule: str) -> None:
        self.checked[rule] = self.checked.get(rule, 0) + 1

    def fail(self, rule: str, message: str, **kw) -> None:
        self.checked[rule] = self.checked.get(rule, 0) + 1
        self.results.append(RuleResult(rule, FAIL, message, **kw))

    def finish(self, rules: tuple[str, ...], what: dict[str, str], *, skipped: dict[str, str]) -> list[RuleResult]:
        out = []
        failed = {r.rule for r in self.results}
        for rule in rules:
            if rule in failed:
                out.extend(r for r in self.results if r.rule == rule)
            elif rule in skipped:
                out.append(RuleResult(rule, SKIP, skipped[rule]))
            elif self.checked.get(rule):
                out.append(RuleResult(rule, PASS, what[rule].format(n=self.checked[rule])))
            else:
                out.append(RuleResult(rule, SKIP, f"{what[rule].format(n=0)}: nothing could be checked (see the failures above)"))
        return out


_ROW_RULES = ("shard_present", "shard_size", "shard_sha256", "shard_readable", "token_dtype", "separator_at_end",
              "no_control_token_inside", "ids_below_vocab", "provenance", "shard_totals")
_PASS_TEXT = {
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


def scan_dataset(manifest: Manifest, folder: str | Path, *, checksums: bool = True) -> DatasetScan:
    """Check every listed file and every row; measure lengths, sources and document hashes."""
    folder = Path(folder)
    tok = manifest.tokenizer
    f = _Failures()
    splits = {s: SplitScan() for s in SPLITS}
    tables: dict[str, pa.Table] = {}
    lut = np.zeros(tok.vocab_size + 1, dtype=bool)
    lut[[i for i in tok.control_token_ids if 0 <= i < tok.vocab_size]] = True
    num_inputs = len(manifest.inputs)

    listed = [(split, sh) for split, sh in manifest.all_shards()]
    if manifest.drop_log is not None:
        listed.append((None, manifest.drop_log))
    for split, info in tqdm(listed, desc="cpt-prep check", unit="file", disable=None, leave=False):
        where = dict(split=split, shard=info.path)
        try:
            full = resolve_path(folder, info.path)
        except ManifestError as exc:
            f.fail("shard_present", str(exc), **where)
            splits.get(split, SplitScan()).complete = False
            continue
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
        _scan_table(table, info, split, splits[split], manifest, lut, num_inputs, f)

    results = [RuleResult("schema_version", PASS, f"schema_version {manifest.schema_version} is supported", value=manifest.schema_version)]
    skipped = {}
    if not checksums:
        skipped["shard_sha256"] = "sha256 not verified (--no-checksums)"
    if not num_inputs:
        skipped["provenance"] = "the manifest lists no inputs; source_index not checked"
    results += f.finish(_ROW_RULES, _PASS_TEXT, skipped=skipped)
    results += _dataset_dtype_result(manifest)
    return DatasetScan(folder=folder, results=results, splits=splits, tables=tables, separator_id=tok.separator_id)


def _open_table(full: Path, rel: str, token_dtype: str, f: _Failures, where: dict) -> Optional[pa.Table]:
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
                f: _Failures) -> None:
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
        scan.hashes.append(d.hashes)
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
