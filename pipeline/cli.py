"""`cpt-prep`: the data-preparation command line (`build`, `check`, `dropped`).

- `cpt-prep build INPUT [INPUT ...]` runs `pipeline.build.build_dataset`; any `data.*` config key
  can be set as `--key value` (e.g. `--min_length 20`, `--data.filter_duplicates false`) on top of
  `--config FILE` (the same three-section file `cpt-train` reads; build uses its `data` section and
  takes the default tokenizer from its `model` section).
- `cpt-prep check` is implemented in `pipeline.check.run`; `cpt-prep dropped MANIFEST` (the dropped
  records with their text read back from the inputs) in `pipeline.check.dropped`.
- Exit codes: 0 ok, 1 a check failed, 2 a user-facing error (`error: <one line>` on stderr, no
  traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.check import dropped as dropped_mod
from pipeline.check import run as check_mod
from schemas.config import DEFAULT_MODEL, load_config, parse_flag_overrides
from schemas.errors import EXIT_OK, EXIT_USAGE, ConfigError, CptError

logger = logging.getLogger("cpt-prep")

EXIT_INTERRUPTED = 130

BUILD_EPILOG = """\
any data.* config key can be given as --KEY VALUE, for example:
  --min_length 20  --filter_duplicates false  --text_field content  --max_train_samples 100000
  --eval_fraction 0.01  --split_seed 3  --shard_target_bytes 268435456  --separator_token '<|endoftext|>'
  --dedup_word_ngram 5  --dedup_char_ngram 5  --dedup_num_bands 14  --dedup_rows_per_band 8  --dedup_seed 1
example:
  cpt-prep build corpus/ --eval heldout.txt --tokenizer Qwen/Qwen2.5-7B --output shards --workers 8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt-prep", description="Prepare a corpus for continued pretraining: filter, deduplicate, tokenize into Arrow shards + manifest.json; check a prepared data set.")
    parser.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level on stderr (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="{build,check,dropped}")
    sub.required = True

    b = sub.add_parser(
        "build",
        help="filter, deduplicate and tokenize INPUTs into shards + manifest.json",
        description="Filter, deduplicate and tokenize a corpus into Arrow token shards with a manifest.",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt (one document per line), .jsonl, .parquet, optionally .gz/.zst; folders (recursive) and quoted globs")
    b.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="hub name or local folder (default: the config's model.tokenizer_name_or_path, else model.model_name_or_path, else Qwen/Qwen2.5-7B)")
    b.add_argument("--output", default="shards", metavar="DIR", help="output folder (default: shards)")
    b.add_argument("--eval", nargs="+", default=[], metavar="EVAL_INPUT", dest="eval_inputs", help="eval inputs (read first; training documents overlapping them are dropped)")
    b.add_argument("--config", metavar="FILE", help="JSON config with sections training/model/data (the file cpt-train reads); build uses data and model")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N", help="worker processes (default: all cores, here %(default)s); the output does not depend on it")
    b.add_argument("--executor", default="local", choices=("local", "ray"), help="where the work runs: local processes (default) or Ray (pip install '.[ray]'); the output does not depend on it")
    b.add_argument("--ray_address", metavar="ADDRESS", help="Ray cluster to run on (with --executor ray; inputs and --output on storage every node sees); default: start Ray here with --workers CPUs")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output folder written by an earlier build")
    b.add_argument("--no_progress", action="store_true", help="no progress bar (it is shown only when stderr is a terminal anyway)")

    c = sub.add_parser("check", help="verify a prepared data set against structural and quality rules", description="Verify a prepared data set (exit 0 pass, 1 a rule failed, 2 unreadable).")
    check_mod.add_arguments(c)

    d = sub.add_parser("dropped", help="print the records a build dropped, with their text read back from the inputs",
                       description="Print the records a build dropped (reason, input:line, the kept original of a duplicate) with their text, "
                       "read back from the inputs the manifest lists.")
    dropped_mod.add_arguments(d)
    return parser


def _split_overrides(extra: Sequence[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs (only data.* keys) -> {full_key: value}."""
    overrides, _ = parse_flag_overrides(extra, usage="inputs come before the options, and config keys are given as --KEY VALUE")
    for full_key in overrides:
        if not full_key.startswith("data."):
            name = full_key.split(".", 1)[1]
            raise ConfigError(f"--{name} sets {full_key}, which cpt-prep build does not use; build takes only data.* keys (put training/model keys in the config for cpt-train)")
    return overrides


def _run_build(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pipeline.build.run import BuildOptions, build_dataset

    config = load_config(args.config)
    overrides = _split_overrides(extra)
    if overrides:
        config = config.with_overrides(overrides)
    if config.data.mlm_probability is not None:
        logger.warning("data.mlm_probability=%s is ignored: masking has no meaning for causal-LM pretraining", config.data.mlm_probability)
    tokenizer = args.tokenizer or config.model.tokenizer_name_or_path or config.model.model_name_or_path or DEFAULT_MODEL
    result = build_dataset(
        BuildOptions(
            inputs=list(args.inputs),
            eval_inputs=list(args.eval_inputs),
            output=Path(args.output),
            tokenizer=tokenizer,
            data=config.data,
            workers=args.workers,
            executor=args.executor,
            ray_address=args.ray_address,
            overwrite=args.overwrite,
            trust_remote_code=config.model.trust_remote_code,
            progress=not args.no_progress,
        )
    )
    sys.stderr.write(format_summary(result))
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `cpt-prep` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    argv, extra = _extract_overrides(parser, argv)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        if args.command == "build":
            return _run_build(args, extra)
        if args.command == "dropped":
            return dropped_mod.run(args)
        return check_mod.run(args)
    except CptError as exc:
        logger.debug("details", exc_info=True)
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        # A second Ctrl-C while the staging folder is removed and the workers stop (users press it
        # twice) must not turn the clean exit 130 into a traceback or a death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        note = "; no manifest was written and the output folder is unchanged" if args.command == "build" else ""
        sys.stderr.write(f"error: interrupted{note}\n")
        return EXIT_INTERRUPTED


def entry() -> None:
    """The `cpt-prep` console script and `python -m pipeline`: `main()`, its exit code made final.

    After an interrupt the build has already stopped its workers and removed its staging folder;
    the process then ends at once with 130 (`os._exit`, after flushing), because the interpreter's
    own shutdown can still turn it into a death by SIGINT (exit -2, seen once in CI after the
    one-line message had been printed) when an interrupt reached it from inside C code."""
    code = main()
    if code == EXIT_INTERRUPTED:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _extract_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split `build`'s `--KEY VALUE` config overrides from the options argparse knows."""
    if "build" not in argv:
        return argv, []
    start = argv.index("build") + 1
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)).choices["build"]  # noqa: SLF001
    known = {opt for action in sub._actions for opt in action.option_strings}  # noqa: SLF001
    kept, extra = argv[:start], []
    i = start
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token.startswith("--") and token != "--" and name not in known:
            extra.append(token)
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                extra.append(argv[i + 1])
                i += 1
        else:
            kept.append(token)
        i += 1
    return kept, extra


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so tests capturing stderr see the log)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def format_summary(result) -> str:
    """The table printed on stderr after a build."""
    m = result.manifest
    acc = m.accounting
    secs = max(result.seconds, 1e-9)
    rows = [("records in", f"{acc.num_records:,}")]
    for split, info in m.splits.items():
        rows.append((f"kept ({split})", f"{acc.kept.get(split, 0):,} documents, {info.num_tokens:,} tokens, {len(info.shards)} shard(s)"))
    for reason, n in acc.dropped.items():
        rows.append((f"dropped: {reason}", f"{n:,}"))
    stats = result.read_stats
    if stats.num_crlf_stripped or stats.num_bom_stripped:
        rows.append(("normalized", f"{stats.num_crlf_stripped:,} CRLF line ends, {stats.num_bom_stripped:,} BOMs stripped"))
    rows.append(("tokens", f"{sum(i.num_tokens for i in m.splits.values()):,} (separator {m.tokenizer.separator_token!r} = {m.tokenizer.separator_id}, {m.token_dtype})"))
    rows.append(("seconds", f"{result.seconds:.1f}"))
    rows.append(("throughput", f"{result.record_bytes / 1e6 / secs:.2f} MB/s, {acc.num_records / secs:,.0f} docs/s ({result.record_bytes / 1e6:.1f} MB of records)"))
    rows.append(("manifest", str(result.manifest_path)))
    width = max(len(k) for k, _ in rows)
    return "cpt-prep build summary\n" + "".join(f"  {k.ljust(width)}  {v}\n" for k, v in rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
