"""The result record of a structural or quality rule, and the collector the structural scan uses.

A result is one rule applied to one place (the data set, a split, or a shard and row): `status` is
`pass`, `fail` or `skip` (skip always says why), with the measured `value` and the `threshold` it
was held against. Rules that never failed get one `pass` (or `skip`) result each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class RuleResult:
    """One rule applied to one place. `rule` is `name` or `name.item` (a drop reason, a percentile, a
    script). `row` is 0-based within `shard` (a path relative to the manifest's folder)."""

    rule: str
    status: str
    message: str
    value: Any = None
    threshold: Any = None
    split: Optional[str] = None
    shard: Optional[str] = None
    row: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def first_failure(results: list[RuleResult]) -> Optional[RuleResult]:
    """The first failed result, in the order the rules ran, or None."""
    return next((r for r in results if r.status == FAIL), None)


class Failures:
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
