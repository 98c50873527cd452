"""`cpt-prep check`: the data-quality gate. Reads a manifest and its shards, runs the structural
checks (always on) and the quality rules (pipeline.rules, thresholds from `--rules`), prints the
results as a text table, JSON, or GitHub workflow annotations, and optionally writes an HTML report.

Exit codes (schemas.errors): 0 every rule passed (skips allowed unless `--strict`), 1 a rule
failed, 2 the data set or the rules file cannot be used at all (unreadable manifest, unknown
schema version, unknown rule or key, a `--tokenizer` that is not the data's).

Cost: one sha256 pass and one vectorised pass over every shard (pipeline.check_shards), plus the
text rules on a seeded sample of `--sample` documents per split (pipeline.check_text).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from pipeline.check_dataset import check_accounting, check_totals, duplicate_cluster_sizes, exact_overlap, read_drop_log, residual_exact
from pipeline.check_quality import evaluate_drop_fraction, evaluate_fraction, evaluate_lengths, evaluate_split_size
from pipeline.check_shards import scan_dataset
from pipeline.rules import FAIL, PASS, SKIP, RuleResult, RulesConfig, load_rules
from schemas.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, CptError
from schemas.manifest import MANIFEST_NAME, SPLITS, Manifest, read_manifest

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 5000
FORMATS = ("text", "json", "github")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `check` subcommand's arguments."""
    parser.add_argument("manifest", nargs="?", help="the data set's manifest.json (or its folder)")
    parser.add_argument("--rules", metavar="RULES_JSON", help="rules file: thresholds over the defaults (see data/check_rules.json); "
                        "unknown rules or keys are an error")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text: a table for people; json: one object for machines; "
                        "github: workflow annotations (::error/::warning/::notice) and a job summary")
    parser.add_argument("--report", metavar="DIR", help="also write DIR/index.html (self-contained, plots embedded) and the plots as PNG")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                        help=f"documents per split decoded for the text rules (default {DEFAULT_SAMPLE}; 0 skips the text rules)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document sample and of the near-duplicate re-check (default 0)")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer to decode the sample with (default: the one the manifest "
                        "records); it must have the manifest's fingerprint")
    parser.add_argument("--no_checksums", "--no-checksums", action="store_true", help="skip the sha256 of each file (sizes are still checked)")
    parser.add_argument("--strict", action="store_true", help="count skipped rules as failures (exit 1)")
    parser.add_argument("--show_rules", "--show-rules", action="store_true", help="print the rules in force (defaults merged with --rules) as JSON and exit")


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
        from pipeline.check_quality import percentile

        names = [i.path for i in self.manifest.inputs]
        return {
            "length_percentiles": {s: {f"p{q}": percentile(c, q) for q in (1, 10, 50, 90, 99)} for s, c in self.length_counts.items()},
            "tokens_by_input": {s: {names[i] if i < len(names) else str(i): int(v) for i, v in enumerate(t) if v}
                                for s, t in self.tokens_by_source.items()},
            "duplicate_clusters": {r: {"clusters": int(len(c)), "documents": int(c.sum()), "max_size": int(c.max())}
                                   for r, c in self.cluster_sizes.items()},
            "script_letters": self.script_counts,
        }


def run_checks(manifest: Manifest, manifest_path: Path, rules: RulesConfig, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
               tokenizer: Optional[str] = None, checksums: bool = True) -> CheckOutcome:
    """Run every check on a manifest that has been read; CptError only for unusable settings."""
    from pipeline.check_text import run_text_checks

    start = time.perf_counter()
    folder = manifest_path.parent
    scan = scan_dataset(manifest, folder, checksums=checksums)
    results = list(scan.results)
    results += check_totals(manifest, scan)
    drop_log = read_drop_log(manifest, folder)
    results += check_accounting(manifest, drop_log, scan)
    overlap, _ = exact_overlap(scan)
    results.append(overlap)

    results += evaluate_drop_fraction(rules.drop_fraction, manifest.accounting)
    results += evaluate_split_size(rules.split_size, {s: (scan.splits[s].num_documents, scan.splits[s].num_tokens) for s in SPLITS})
    for split in SPLITS:
        results += evaluate_lengths(rules.length_percentiles, rules.short_documents, split, scan.splits[split].length_counts)
        if rules.residual_duplicates.enabled and scan.splits[split].num_documents:
            n, dup, example = residual_exact(scan, split)
            results.append(evaluate_fraction("residual_duplicates.exact", split, dup / n, rules.residual_duplicates.max_exact_fraction,
                                             f"{dup:,} of {n:,} documents repeat an earlier document's ids:", example=example,
                                             fix="rebuild with data.filter_duplicates on"))
    text = run_text_checks(manifest, scan, rules, sample=sample, seed=seed, tokenizer=tokenizer)
    results += text.results
    return CheckOutcome(
        manifest=manifest,
        manifest_path=manifest_path,
        results=results,
        length_counts={s: scan.splits[s].length_counts for s in SPLITS if scan.splits[s].num_documents},
        tokens_by_source={s: scan.splits[s].tokens_by_source for s in SPLITS if scan.splits[s].num_documents},
        cluster_sizes=duplicate_cluster_sizes(drop_log),
        script_counts=text.script_counts,
        seconds=time.perf_counter() - start,
    )


def run(args: argparse.Namespace) -> int:
    """Run `cpt-prep check`; returns the exit code (0 pass, 1 a rule failed, 2 unusable input)."""
    fmt = getattr(args, "format", "text") or "text"
    out = sys.stdout
    try:
        rules = load_rules(args.rules)
        if args.show_rules:
            out.write(json.dumps(rules.to_dict(), indent=2) + "\n")
            return EXIT_OK
        if not args.manifest:
            raise ConfigError("no manifest given; run `cpt-prep check path/to/manifest.json`")
        if args.sample < 0:
            raise ConfigError(f"--sample {args.sample} is invalid: expected an integer >= 0")
        path = Path(args.manifest)
        if path.is_dir():
            path = path / MANIFEST_NAME
        manifest = read_manifest(path)
        outcome = run_checks(manifest, path, rules, sample=args.sample, seed=args.seed, tokenizer=args.tokenizer,
                             checksums=not args.no_checksums)
        code = outcome.exit_code(strict=args.strict)
        if args.report:
            from pipeline.report import write_report

            index = write_report(outcome, args.report, code=code)
            logger.info("report written to %s", index)
    except CptError as exc:
        _emit_error(str(exc), fmt, args.manifest, out)
        return EXIT_USAGE
    {"text": write_text, "json": write_json, "github": write_github}[fmt](outcome, out, code=code)
    return code


# ------------------------------------------------------------------------------------- formats
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


def _emit_error(message: str, fmt: str, manifest: Optional[str], out: TextIO) -> None:
    sys.stderr.write(f"error: {message}\n")
    if fmt == "json":
        out.write(json.dumps({"manifest": manifest, "passed": False, "exit_code": EXIT_USAGE, "error": message, "results": []}) + "\n")
    elif fmt == "github":
        out.write(f"::error title={_gh_escape('cpt-prep check', prop=True)}::{_gh_escape(message)}\n")
