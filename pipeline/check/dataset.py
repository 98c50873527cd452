"""Data-set-level checks of `cpt-prep check`, from the manifest and the shard scan: split totals,
accounting (records in = kept + dropped, kept = split documents, drop log = dropped by reason),
duplicate cluster sizes from the drop log, exact train/eval overlap and residual exact duplicates
from the per-document hashes of pipeline.check.shards.

- Train/eval hash matches are confirmed by comparing the ids (the first `MAX_CONFIRMED_PAIRS`;
  beyond that they are counted by hash), so a 64-bit collision never produces a false failure.
- Residual exact duplicates are counted by hash over every document of a split: with n documents,
  the chance of any collision is about n^2 / 2^65 (3e-4 at 100 million documents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.check.rules import FAIL, PASS, SKIP, RuleResult
from pipeline.check.shards import DatasetScan, provenance_key
from schemas.errors import ManifestError
from schemas.manifest import Manifest, open_shard, resolve_path

MAX_CONFIRMED_PAIRS = 10_000  # train/eval hash matches compared id by id; more are counted by hash


def check_totals(manifest: Manifest, scan: DatasetScan) -> list[RuleResult]:
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


def check_accounting(manifest: Manifest, drop_log: Optional[pa.Table], scan: Optional[DatasetScan] = None) -> list[RuleResult]:
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


def _one_outcome_problems(scan: DatasetScan, drop_log: Optional[pa.Table]) -> list[str]:
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


def duplicate_cluster_sizes(drop_log: Optional[pa.Table]) -> dict[str, np.ndarray]:
    """Per duplicate reason, the size of every cluster (the kept original + the records dropped as its copies)."""
    out: dict[str, np.ndarray] = {}
    if drop_log is None or "duplicate_of_line" not in drop_log.column_names:
        return out
    src = drop_log.column("duplicate_of_source_index").to_numpy(zero_copy_only=False).astype(np.int64)
    line = drop_log.column("duplicate_of_line").to_numpy(zero_copy_only=False).astype(np.int64)
    for r in ("exact_duplicate", "near_duplicate", "overlaps_eval"):
        sel = pc.equal(drop_log.column("reason"), r).to_numpy(zero_copy_only=False) & (line >= 0)
        if sel.any():
            _, counts = np.unique(np.stack([src[sel], line[sel]], axis=1), axis=0, return_counts=True)
            out[r] = counts + 1
    return out


def exact_overlap(scan: DatasetScan) -> tuple[RuleResult, list[tuple[tuple[str, int], tuple[str, int]]]]:
    """Train documents whose ids equal an eval document's (confirmed id by id)."""
    train, ev = scan.splits["train"], scan.splits["eval"]
    if not train.hashes or not ev.hashes:
        return RuleResult("train_eval_exact_overlap", SKIP if not train.hashes else PASS,
                          "no readable train documents" if not train.hashes else "no eval documents: nothing can overlap", value=0, threshold=0), []
    th, eh = np.concatenate(train.hashes), np.concatenate(ev.hashes)
    ti = np.flatnonzero(np.isin(th, eh))
    pairs = []
    if len(ti):
        order = np.argsort(eh, kind="stable")
        for i in ti[:MAX_CONFIRMED_PAIRS]:
            j = order[np.searchsorted(eh[order], th[i])]
            a, b = train.locate(int(i)), ev.locate(int(j))
            if np.array_equal(scan.content(*a), scan.content(*b)):
                pairs.append((a, b))
    unconfirmed = max(len(ti) - MAX_CONFIRMED_PAIRS, 0)  # beyond the cap, counted by their 64-bit hashes
    if pairs:
        (ts, tr), (es, er) = pairs[0]
        count = len(pairs) + unconfirmed
        how = f" ({len(pairs):,} compared id by id, the rest by hash)" if unconfirmed else ""
        return RuleResult("train_eval_exact_overlap", FAIL, f"{count:,} train documents equal an eval document{how}, e.g. {ts} row {tr} = {es} row {er}; "
                          "rebuild with data.decontaminate on", value=count, threshold=0, split="train", shard=ts, row=tr), pairs
    return RuleResult("train_eval_exact_overlap", PASS, f"none of {len(th):,} train documents equals one of {len(eh):,} eval documents",
                      value=0, threshold=0), pairs


def residual_exact(scan: DatasetScan, split: str) -> tuple[int, int, Optional[tuple[str, int]]]:
    """(documents, documents whose ids repeat an earlier one's, (shard, row) of the first repeat)."""
    s = scan.splits[split]
    if not s.hashes:
        return 0, 0, None
    h = np.concatenate(s.hashes)
    _, first = np.unique(h, return_index=True)
    num_dup = len(h) - len(first)
    example = None
    if num_dup:
        is_first = np.zeros(len(h), dtype=bool)
        is_first[first] = True
        example = s.locate(int(np.flatnonzero(~is_first)[0]))
    return len(h), num_dup, example
