"""`verify_dataset`: every structural rule of a data set in one pass over its files, then the
data-set-level rules from the manifest and the scan's measurements.

- Split totals: each split's documents and tokens == the sums over its shards == what the shards
  hold (when every shard was read).
- Accounting: records in == kept + dropped; kept per split == split documents; the drop log has
  the recorded rows and the dropped counts per reason; and, when the manifest lists its inputs, no
  input record (source_index, line) has two outcomes (kept twice, or kept and dropped).
- The results come in the order the rules ran; `first_failure` of them is the one-line reason both
  `cpt-prep check` (which shows them all) and `cpt-train` (which stops on it) give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import ManifestError
from schemas.manifest import MANIFEST_NAME, Manifest, open_shard, resolve_path
from schemas.verify.results import FAIL, PASS, RuleResult, first_failure
from schemas.verify.rows import provenance_key
from schemas.verify.scan import DocumentHasher, ShardScan, SplitScan, scan_shards


@dataclass
class Verification:
    """The structural results of a data set and what the pass measured (for cpt-prep check's rules)."""

    results: list[RuleResult]
    splits: dict[str, SplitScan]
    tables: dict[str, pa.Table]  # memory-mapped shards, by relative path
    drop_log: Optional[pa.Table]


def verify_dataset(manifest: Manifest, folder: str | Path, *, checksums: bool = True, hash_documents: Optional[DocumentHasher] = None,
                   desc: str = "verify shards") -> Verification:
    """Run every structural rule on a manifest that has been read (`schemas.manifest.read_manifest`)."""
    folder = Path(folder)
    scan = scan_shards(manifest, folder, checksums=checksums, hash_documents=hash_documents, desc=desc)
    drop_log = read_drop_log(manifest, folder)
    results = [*scan.results, *check_totals(manifest, scan), *check_accounting(manifest, drop_log, scan)]
    return Verification(results=results, splits=scan.splits, tables=scan.tables, drop_log=drop_log)


def verify_or_raise(manifest: Manifest, folder: str | Path, *, checksums: bool = True, source: str = MANIFEST_NAME) -> Verification:
    """`verify_dataset`, raising a one-line ManifestError with the first failed rule and its reason."""
    found = verify_dataset(manifest, folder, checksums=checksums)
    failed = first_failure(found.results)
    if failed is not None:
        more = sum(r.status == FAIL for r in found.results) - 1
        also = f" ({more} more failure{'s' if more > 1 else ''}: `cpt-prep check {source}` lists them all)" if more else ""
        raise ManifestError(f"{source} fails the structural check {failed.rule}: {failed.message}{also}")
    return found


def check_totals(manifest: Manifest, scan: ShardScan) -> list[RuleResult]:
    """Split totals == sums over shards == what the shards hold (when every shard was read)."""
    out = []
    for split, info in manifest.splits.items():
        docs = sum(s.num_documents for s in info.shards)
        toks = sum(s.num_tokens for s in info.shards)
        measured = scan.splits[split]
        problems = []
        if (info.num_documents, info.num_tokens) != (docs, toks):
            problems.append(f"records {info.num_documents:,} documents / {info.num_tokens:,} tokens but its shards sum to {docs:,} / {toks:,}")
        if measured.complete and (measured.num_documents, measured.num_tokens) != (info.num_documents, info.num_tokens):
            problems.append(f"its shards hold {measured.num_documents:,} documents / {measured.num_tokens:,} tokens, the manifest says "
                            f"{info.num_documents:,} / {info.num_tokens:,}")
        if problems:
            out.append(RuleResult("split_totals", FAIL, f"split {split} " + "; ".join(problems) + "; the manifest was edited, rebuild",
                                  value={"documents": measured.num_documents, "tokens": measured.num_tokens},
                                  threshold={"documents": info.num_documents, "tokens": info.num_tokens}, split=split))
        else:
            out.append(RuleResult("split_totals", PASS, f"split {split}: {info.num_documents:,} documents, {info.num_tokens:,} tokens, as its shards",
                                  value={"documents": info.num_documents, "tokens": info.num_tokens}, split=split))
    return out


def read_drop_log(manifest: Manifest, folder: Path) -> Optional[pa.Table]:
    """The drop log as a table, or None when there is none or it cannot be read (reported elsewhere)."""
    if manifest.drop_log is None:
        return None
    try:
        full = resolve_path(folder, manifest.drop_log.path)
        if full.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(full)
        return open_shard(full)
    except (ManifestError, OSError, pa.ArrowException):
        return None


def check_accounting(manifest: Manifest, drop_log: Optional[pa.Table], scan: Optional[ShardScan] = None) -> list[RuleResult]:
    """Records in == kept + dropped; kept per split == split documents; the drop log agrees; and,
    when the manifest lists its inputs, no input record (source_index, line) has two outcomes."""
    acc = manifest.accounting
    problems = list(acc.problems())
    if scan is not None and manifest.inputs:
        problems += _one_outcome_problems(scan, drop_log)
    for split in sorted(set(acc.kept) | set(manifest.splits)):
        kept = acc.kept.get(split, 0)
        docs = manifest.splits[split].num_documents if split in manifest.splits else 0
        if kept != docs:
            problems.append(f"kept[{split}] = {kept:,} but split {split} has {docs:,} documents")
    if manifest.drop_log is not None:
        if drop_log is None:
            problems.append(f"drop log {manifest.drop_log.path} cannot be read")
        else:
            if drop_log.num_rows != manifest.drop_log.num_rows:
                problems.append(f"drop log has {drop_log.num_rows:,} rows, the manifest records {manifest.drop_log.num_rows:,}")
            if "reason" in drop_log.column_names:
                counted = pc.value_counts(drop_log.column("reason")).to_pylist()
                logged = {str(x["values"]): int(x["counts"]) for x in counted}
                for reason in sorted(set(logged) | {k for k, v in acc.dropped.items() if v}):
                    if logged.get(reason, 0) != acc.dropped.get(reason, 0):
                        problems.append(f"drop log lists {logged.get(reason, 0):,} '{reason}' records, the accounting {acc.dropped.get(reason, 0):,}")
            else:
                problems.append("drop log has no 'reason' column")
    total = sum(acc.kept.values()) + sum(acc.dropped.values())
    value = {"records": acc.num_records, "kept": sum(acc.kept.values()), "dropped": sum(acc.dropped.values())}
    if problems:
        return [RuleResult("accounting", FAIL, "accounting does not add up: " + "; ".join(problems) + "; rebuild with `cpt-prep build`",
                           value=value, threshold={"records": total})]
    return [RuleResult("accounting", PASS, f"{acc.num_records:,} records = {sum(acc.kept.values()):,} kept + {sum(acc.dropped.values()):,} dropped"
                       + ("" if manifest.drop_log is None else ", as the drop log lists"), value=value)]


def _one_outcome_problems(scan: ShardScan, drop_log: Optional[pa.Table]) -> list[str]:
    """Input records that appear twice among the kept documents and the drop log."""
    keys = [k for s in scan.splits.values() for k in s.record_keys]
    if drop_log is not None and {"source_index", "line"} <= set(drop_log.column_names):
        keys.append(provenance_key(drop_log.column("source_index").to_numpy(zero_copy_only=False),
                                   drop_log.column("line").to_numpy(zero_copy_only=False)))
    if not keys:
        return []
    all_keys = np.sort(np.concatenate(keys))
    repeated = all_keys[1:][all_keys[1:] == all_keys[:-1]]
    if not len(repeated):
        return []
    first = int(repeated[0])
    return [f"{len(np.unique(repeated)):,} input records have more than one outcome (kept twice, or kept and dropped), "
            f"e.g. input {first >> 40} line {first & ((1 << 40) - 1)}"]

