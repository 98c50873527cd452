"""Data-set-level measurements of `cpt-prep check` beyond the structural rules (split totals and
accounting are schemas.verify's): duplicate cluster sizes from the drop log, exact train/eval
overlap and residual exact duplicates from the per-document hashes of pipeline.check.shards.

- Train/eval hash matches are confirmed by comparing the ids (the first `MAX_CONFIRMED_PAIRS`;
  beyond that they are counted by hash), so a 64-bit collision never produces a false failure.
- Residual exact duplicates are counted by hash over every document of a split: with n documents,
  the chance of any collision is about n^2 / 2^65 (3e-4 at 100 million documents).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.check.shards import DatasetScan
from schemas.verify.results import FAIL, PASS, SKIP, RuleResult

MAX_CONFIRMED_PAIRS = 10_000  # train/eval hash matches compared id by id; more are counted by hash


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
