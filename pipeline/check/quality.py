"""Quality rules of `cpt-prep check` evaluated from measured statistics (no I/O): drop fractions,
split sizes, document-length percentiles, very short documents, measured fractions against their
maximum, script shares. Each returns RuleResults naming the value and the threshold.

Percentiles are nearest-rank over the exact length histogram (one count per length, so memory
grows with the longest document, not with the number of documents).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.check.rules import (
    DropFractionRule,
    LengthPercentilesRule,
    ScriptSharesRule,
    ShortDocumentsRule,
    SplitSizeRule,
)
from pipeline.check.text_quality import SCRIPTS
from schemas.manifest import DROP_REASONS, SPLITS, Accounting
from schemas.verify.results import FAIL, PASS, SKIP, RuleResult


def percentile(length_counts: np.ndarray, q: float) -> int:
    """Nearest-rank percentile of a length histogram (`length_counts[L]` documents of length L)."""
    total = int(length_counts.sum())
    rank = max(int(np.ceil(q / 100 * total)), 1)
    return int(np.searchsorted(np.cumsum(length_counts), rank))


def _bound_problem(value: float, bound: dict[str, Optional[float]]) -> Optional[str]:
    lo, hi = bound.get("min"), bound.get("max")
    if lo is not None and value < lo:
        return f"below the minimum {lo}"
    if hi is not None and value > hi:
        return f"above the maximum {hi}"
    return None


def evaluate_drop_fraction(rule: DropFractionRule, acc: Accounting) -> list[RuleResult]:
    """One result per drop reason with a limit, plus the total."""
    if not rule.enabled:
        return []
    n = max(acc.num_records, 1)
    out = []
    for reason in DROP_REASONS:
        limit = rule.max_fraction.get(reason)
        if limit is None:
            continue
        count = acc.dropped.get(reason, 0)
        frac = count / n
        ok = frac <= limit
        out.append(RuleResult(f"drop_fraction.{reason}", PASS if ok else FAIL, f"{reason}: {count} of {acc.num_records} records dropped "
                              f"({frac:.2%}){'' if ok else f', above the maximum {limit:.2%}; look at the inputs or raise drop_fraction.max_fraction.{reason}'}",
                              value=round(frac, 6), threshold=limit))
    total = sum(v for k, v in acc.dropped.items() if k != "over_max_samples")
    frac = total / n
    ok = frac <= rule.max_total_fraction
    out.append(RuleResult("drop_fraction.total", PASS if ok else FAIL, f"total: {total} of {acc.num_records} records dropped ({frac:.2%})"
                          + ("" if ok else f", above the maximum {rule.max_total_fraction:.2%}"),
                          value=round(frac, 6), threshold=rule.max_total_fraction))
    return out


def evaluate_split_size(rule: SplitSizeRule, sizes: dict[str, tuple[int, int]]) -> list[RuleResult]:
    """`sizes[split] = (documents, tokens)` as measured in the shards."""
    if not rule.enabled:
        return []
    out = []
    for split in SPLITS:
        docs, tokens = sizes.get(split, (0, 0))
        for what, value, limit in (("tokens", tokens, rule.min_tokens.get(split, 0)), ("documents", docs, rule.min_documents.get(split, 0))):
            ok = value >= limit
            out.append(RuleResult(f"split_size.min_{what}", PASS if ok else FAIL, f"{split} has {value:,} {what}"
                                  + ("" if ok else f", fewer than the minimum {limit:,}; add data or lower split_size.min_{what}.{split}"),
                                  value=value, threshold=limit, split=split))
    return out


def evaluate_lengths(pct: LengthPercentilesRule, short: ShortDocumentsRule, split: str, counts: np.ndarray) -> list[RuleResult]:
    """Percentile bounds and the very-short fraction for one split's length histogram."""
    n = int(counts.sum()) if counts is not None else 0
    out = []
    if n == 0:
        for rule, enabled in (("length_percentiles", pct.enabled), ("short_documents", short.enabled)):
            if enabled:
                out.append(RuleResult(rule, SKIP, f"{split} has no readable documents", split=split))
        return out
    if pct.enabled:
        for key, bound in sorted(pct.bounds.items(), key=lambda kv: float(kv[0][1:])):
            value = percentile(counts, float(key[1:]))
            problem = _bound_problem(value, bound)
            out.append(RuleResult(f"length_percentiles.{key}", FAIL if problem else PASS,
                                  f"{split} {key} document length is {value:,} tokens" + (f", {problem}" if problem else ""),
                                  value=value, threshold=bound, split=split))
    if short.enabled:
        num_short = int(counts[: short.max_tokens + 1].sum())
        frac = num_short / n
        ok = frac <= short.max_fraction
        out.append(RuleResult("short_documents", PASS if ok else FAIL,
                              f"{split}: {num_short:,} of {n:,} documents have <= {short.max_tokens} tokens ({frac:.2%})"
                              + ("" if ok else f", above the maximum {short.max_fraction:.2%}"),
                              value=round(frac, 6), threshold=short.max_fraction, split=split))
    return out


def pct(value: float) -> str:
    """A fraction as a percentage with the digits that matter (0.0123% for thresholds like 1e-4)."""
    return "0%" if value == 0 else f"{value:.4%}" if value < 0.001 else f"{value:.2%}"


def evaluate_fraction(rule: str, split: str, value: float, limit: float, what: str, *, example: Optional[tuple[str, int]] = None,
                      fix: str = "") -> RuleResult:
    """A measured fraction against its maximum; `example` = (shard, row) of one offending document."""
    ok = value <= limit
    shard, row = example if example and not ok else (None, None)
    msg = f"{split}: {what} {pct(value)}" + ("" if ok else f", above the maximum {pct(limit)}" + (f" (e.g. {shard} row {row})" if shard else "") + (f"; {fix}" if fix else ""))
    return RuleResult(rule, PASS if ok else FAIL, msg, value=round(value, 6), threshold=limit, split=split, shard=shard, row=row)


def evaluate_script_shares(rule: ScriptSharesRule, split: str, counts: dict[str, int]) -> list[RuleResult]:
    """Shares of letters per script; one result per bounded script, or one informational pass."""
    if not rule.enabled:
        return []
    letters = sum(counts.values())
    if letters == 0:
        return [RuleResult("script_shares", SKIP, f"{split}: no letters in the sample", split=split)]
    shares = {s: round(counts.get(s, 0) / letters, 4) for s in SCRIPTS if counts.get(s, 0)}
    summary = ", ".join(f"{s} {v:.1%}" for s, v in sorted(shares.items(), key=lambda kv: -kv[1]))
    if not rule.bounds:
        return [RuleResult("script_shares", PASS, f"{split}: {summary} (no bounds set)", value=shares, split=split)]
    out = []
    for script, bound in rule.bounds.items():
        value = shares.get(script, 0.0)
        problem = _bound_problem(value, bound)
        out.append(RuleResult(f"script_shares.{script}", FAIL if problem else PASS, f"{split}: {script} is {value:.1%} of letters"
                              + (f", {problem}" if problem else "") + f" ({summary})", value=value, threshold=bound, split=split))
    return out
