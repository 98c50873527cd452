"""`cpt-prep check`: the data-quality gate. Reads a manifest and its shards, runs the structural
checks (always on) and the quality rules (pipeline.check.rules, thresholds from `--rules`), prints the
results as a text table, JSON, or GitHub workflow annotations, and optionally writes an HTML report.

Exit codes (schemas.errors): 0 every rule passed (skips allowed unless `--strict`), 1 a rule
failed, 2 the data set or the rules file cannot be used at all (unreadable manifest, unknown
schema version, unknown rule or key, a `--tokenizer` that is not the data's).

Cost: one sha256 pass and one vectorised pass over every shard (schemas.verify, the structural
rules cpt-train runs too, plus the document hashes of pipeline.check.shards), plus the text rules on a seeded sample of `--sample` documents per split (pipeline.check.text).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from pipeline.check.dataset import (
    duplicate_cluster_sizes,
    exact_overlap,
    residual_exact,
)
from pipeline.check.formats import emit_error, write_github, write_json, write_text
from pipeline.check.outcome import CheckOutcome
from pipeline.check.quality import (
    evaluate_drop_fraction,
    evaluate_fraction,
    evaluate_lengths,
    evaluate_split_size,
)
from pipeline.check.rules import RulesConfig, load_rules
from pipeline.check.shards import scan_dataset
from schemas.errors import EXIT_OK, EXIT_USAGE, ConfigError, CptError
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


def run_checks(manifest: Manifest, manifest_path: Path, rules: RulesConfig, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
               tokenizer: Optional[str] = None, checksums: bool = True) -> CheckOutcome:
    """Run every check on a manifest that has been read; CptError only for unusable settings."""
    from pipeline.check.text import run_text_checks

    start = time.perf_counter()
    folder = manifest_path.parent
    scan = scan_dataset(manifest, folder, checksums=checksums)  # every structural rule, shared with cpt-train
    results = list(scan.results)
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
        cluster_sizes=duplicate_cluster_sizes(scan.drop_log),
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
            from pipeline.check.report import write_report

            index = write_report(outcome, args.report, code=code)
            logger.info("report written to %s", index)
    except CptError as exc:
        emit_error(str(exc), fmt, args.manifest, out)
        return EXIT_USAGE
    {"text": write_text, "json": write_json, "github": write_github}[fmt](outcome, out, code=code)
    return code
