"""The three output formats of `cpt-prep check` (`--format text|json|github`) and its one-line error.

- `text`: a table for people (status, rule, where, value, threshold, message) and a headline.
- `json`: one object for machines: manifest, passed, exit_code, counts, seconds, results, stats.
- `github`: workflow commands (`::error` per failure, `::warning` per skip, one `::notice`), plus a
  markdown table appended to `$GITHUB_STEP_SUMMARY` when that variable is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Optional, TextIO

from pipeline.check.outcome import CheckOutcome
from schemas.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from schemas.verify.results import FAIL, PASS, SKIP, RuleResult

logger = logging.getLogger(__name__)

def _where(r: RuleResult) -> str:
    if r.shard:
        return r.shard + (f":{r.row}" if r.row is not None else "")
    return r.split or "-"


def _short(value: Any, width: int = 18) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


def _headline(outcome: CheckOutcome, code: int) -> str:
    c = outcome.counts()
    verdict = {EXIT_OK: "PASSED", EXIT_FAILED: "FAILED"}[code]
    return (f"cpt-prep check {outcome.manifest_path}: {verdict} ({c[FAIL]} failed, {c[SKIP]} skipped, {c[PASS]} passed, "
            f"{outcome.seconds:.1f} s)")


def write_text(outcome: CheckOutcome, out: TextIO, *, code: int) -> None:
    """A table for people: status, rule, where (split or shard:row), value, threshold, message."""
    rows = [("STATUS", "RULE", "WHERE", "VALUE", "THRESHOLD", "MESSAGE")]
    rows += [(r.status.upper(), r.rule, _where(r), _short(r.value), _short(r.threshold), r.message) for r in outcome.results]
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in enumerate((6, 34, 40, 18, 18))]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths)]
        out.write("  ".join(cells) + "  " + row[-1] + "\n")
    out.write(_headline(outcome, code) + "\n")


def write_json(outcome: CheckOutcome, out: TextIO, *, code: int) -> None:
    """One JSON object: manifest, passed, exit_code, counts, seconds, results (RuleResult fields), stats."""
    doc = {
        "manifest": str(outcome.manifest_path),
        "passed": code == EXIT_OK,
        "exit_code": code,
        "counts": outcome.counts(),
        "seconds": round(outcome.seconds, 3),
        "results": [r.to_dict() for r in outcome.results],
        "stats": outcome.stats(),
    }
    out.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")


def _gh_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def write_github(outcome: CheckOutcome, out: TextIO, *, code: int) -> None:
    """GitHub Actions workflow commands: ::error per failure, ::warning per skip, one ::notice; plus a
    markdown table in $GITHUB_STEP_SUMMARY when that variable is set."""
    folder = outcome.manifest_path.parent
    for r in outcome.results:
        if r.status == PASS:
            continue
        level = "error" if r.status == FAIL else "warning"
        file = str(folder / r.shard) if r.shard and (folder / r.shard).suffix else str(outcome.manifest_path)
        detail = "" if r.status == SKIP else f" [value={_short(r.value, 70)} threshold={_short(r.threshold, 70)}"
        detail += "" if r.status == SKIP else (f" row={r.row}]" if r.row is not None else "]")
        out.write(f"::{level} file={_gh_escape(file, prop=True)},title={_gh_escape('cpt-prep check: ' + r.rule, prop=True)}::"
                  f"{_gh_escape(r.message + detail)}\n")
    out.write(f"::notice title={_gh_escape('cpt-prep check', prop=True)}::{_gh_escape(_headline(outcome, code))}\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        lines = [f"### {_headline(outcome, code)}", "", "| status | rule | where | value | threshold | message |", "|---|---|---|---|---|---|"]
        for r in outcome.results:
            cells = [r.status, r.rule, _where(r), _short(r.value, 40), _short(r.threshold, 40), r.message]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as exc:
            logger.warning("cannot write the job summary to %s (%s)", summary, exc)


def emit_error(message: str, fmt: str, manifest: Optional[str], out: TextIO) -> None:
    sys.stderr.write(f"error: {message}\n")
    if fmt == "json":
        out.write(json.dumps({"manifest": manifest, "passed": False, "exit_code": EXIT_USAGE, "error": message, "results": []}) + "\n")
    elif fmt == "github":
        out.write(f"::error title={_gh_escape('cpt-prep check', prop=True)}::{_gh_escape(message)}\n")
