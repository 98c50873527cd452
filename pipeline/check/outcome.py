"""`CheckOutcome`: what one `cpt-prep check` run measured (the rule results plus the numbers the
report plots). Shared by `pipeline.check.run` (which makes it), `pipeline.check.formats` (text,
JSON, GitHub output) and `pipeline.check.report` (HTML); it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.check.quality import percentile
from schemas.errors import EXIT_FAILED, EXIT_OK
from schemas.manifest import Manifest
from schemas.verify.results import FAIL, PASS, SKIP, RuleResult


@dataclass
class CheckOutcome:
    """Everything one check measured: the results and what the report plots."""

    manifest: Manifest
    manifest_path: Path
    results: list[RuleResult]
    length_counts: dict[str, Any] = field(default_factory=dict)  # split -> np.ndarray histogram of tokens/document
    tokens_by_source: dict[str, Any] = field(default_factory=dict)  # split -> np.ndarray tokens per input index
    cluster_sizes: dict[str, Any] = field(default_factory=dict)  # reason -> np.ndarray of cluster sizes
    script_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> script -> letters
    seconds: float = 0.0

    def exit_code(self, *, strict: bool = False) -> int:
        bad = {FAIL, SKIP} if strict else {FAIL}
        return EXIT_FAILED if any(r.status in bad for r in self.results) else EXIT_OK

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in (FAIL, SKIP, PASS)}

    def stats(self) -> dict[str, Any]:
        """What the report plots, in numbers: lengths, tokens per input, duplicate clusters, scripts."""
        names = [i.path for i in self.manifest.inputs]
        return {
            "length_percentiles": {s: {f"p{q}": percentile(c, q) for q in (1, 10, 50, 90, 99)} for s, c in self.length_counts.items()},
            "tokens_by_input": {s: {names[i] if i < len(names) else str(i): int(v) for i, v in enumerate(t) if v}
                                for s, t in self.tokens_by_source.items()},
            "duplicate_clusters": {r: {"clusters": int(len(c)), "documents": int(c.sum()), "max_size": int(c.max())}
                                   for r, c in self.cluster_sizes.items()},
            "script_letters": self.script_counts,
        }
