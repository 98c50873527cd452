"""`cpt-train`: continued pre-training from a `cpt-prep` manifest.

    cpt-train --manifest shards/manifest.json [--config cpt_config.json] [--key value ...]
    cpt-train --manifest domain/manifest.json --manifest general/manifest.json --mixture_weights 0.8,0.2 ...

- Every config key is a flag: `--learning_rate 1e-4`, `--training.learning_rate 1e-4`,
  `--key=value`; a bare boolean flag means true (`--overwrite_output_dir`). The original tool's
  flags work (`--batch_size` = per_device_train_batch_size). Unknown keys are errors.
- `--train_data` / `--eval_data` (raw text, the original tool's flags) exit 2 with the exact
  `cpt-prep build` command to run first: the trainer never reads raw text.
- `--manifest` may be repeated (a mixture; `training.mixture_weights` gives each one's share of the
  training tokens); given on the command line it replaces `training.manifests` of the config file.
- Errors from bad input (`CptError`) print one line, `error: ...`, and exit 2; a run that started
  and could not go on (`TrainingError`, e.g. too many skipped steps in a row) exits 1. Logging is
  set up once, INFO on rank 0 only (`RANK` from `accelerate launch`), warnings and errors elsewhere.
- The end-of-run summary goes to stdout (rank 0); logs and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import os
import shlex
import sys
from typing import Any, Optional, Sequence

from schemas import config as config_module
from schemas.config import SECTIONS, CptConfig, all_keys, load_config, parse_flag_overrides
from schemas.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, CptError, TrainingError

logger = logging.getLogger("trainer")
RAW_TEXT_FLAGS = ("train_data", "eval_data")
EXIT_INTERRUPTED = 130


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is at each record (tqdm and pytest swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    """Once per process: INFO on rank 0 (stderr), WARNING on the other ranks."""
    main = _rank() == 0
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, handlers=[handler], force=True)
    # Library chatter: Accelerate logs every file of a checkpoint at INFO and warns that tied
    # embeddings are stored once (expected); matplotlib logs its font cache.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()  # per-file load/save bars; ours shows steps
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _key_docs() -> dict[str, str]:
    """`section.key` -> the one-line docstring under the field in schemas/config.py (for --help)."""
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(config_module))
    names = {cls.__name__: section for section, cls in SECTIONS.items()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in names:
            body = node.body
            for stmt, nxt in zip(body, body[1:]):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr) \
                        and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    docs[f"{names[node.name]}.{stmt.target.id}"] = nxt.value.value.strip()
    return docs


def _help_epilog() -> str:
    defaults = CptConfig().to_dict()
    docs = _key_docs()
    lines = ["config keys (flags override the --config file; `--key value`, `--section.key value` or `--key=value`):"]
    for full in all_keys():
        section, key = full.split(".", 1)
        lines.append(f"  --{full} (default {defaults[section][key]!r}): {docs.get(full, '')}")
    lines.append("  --batch_size: alias of --training.per_device_train_batch_size (the original tool's flag)")
    lines.append("")
    lines.append("data.* keys are preparation settings: they are read from the manifest; a conflicting value is an error.")
    lines.append("Multi-GPU: accelerate launch --num_processes N -m trainer --manifest ... (FSDP: --config_file accelerate_configs/fsdp_7b.yaml)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpt-train",
        description="Continued pre-training of a causal LM on the shards of a `cpt-prep build` manifest (Accelerate: CPU, GPU, DDP, FSDP).",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--manifest", action="append",
                        help="manifest.json written by `cpt-prep build` (or its folder); repeat it for a mixture, with --mixture_weights")
    parser.add_argument("--config", help="JSON config with sections training, model, data (e.g. a previous run's cpt_config.json)")
    return parser


def parse_overrides(tokens: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`--key value` / `--key=value` / bare boolean `--key` -> ({key: value}, {raw-text flag: value})."""
    return parse_flag_overrides(tokens, passthrough=RAW_TEXT_FLAGS, usage="pass settings as --key value (see cpt-train --help)")


def raw_text_message(raw_text: dict[str, str], model: str) -> str:
    """The one-line answer to --train_data/--eval_data: the cpt-prep command to run first."""
    train = raw_text.get("train_data", "TRAIN.txt")
    split = f"--eval {shlex.quote(raw_text['eval_data'])}" if "eval_data" in raw_text else "--eval_fraction 0.05"
    return (
        f"cpt-train reads prepared shards, not raw text (--{' / --'.join(raw_text)}); run first: "
        f"cpt-prep build {shlex.quote(train)} {split} --tokenizer {shlex.quote(model)} --output shards; "
        "then: cpt-train --manifest shards/manifest.json"
    )


def resolve_config(config_path: Optional[str], overrides: dict[str, Any]) -> CptConfig:
    return load_config(config_path).with_overrides(overrides)


def interrupted_hint(config: Optional[CptConfig]) -> str:
    """What to do after Ctrl-C: resume, when output_dir holds a complete checkpoint; else say there is none."""
    if config is None:
        return ""
    from trainer.checkpoint import list_checkpoints

    found = list_checkpoints(config.training.output_dir)
    if found:
        return f"; resume from {found[-1][1]} (step {found[-1][0]}) with --resume_from_checkpoint latest"
    return f"; no checkpoint was written to {config.training.output_dir} yet, so a rerun starts from step 0"


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    config: Optional[CptConfig] = None
    try:
        overrides, raw_text = parse_overrides(rest)
        if args.manifest:
            overrides["training.manifests"] = list(args.manifest)
        config = resolve_config(args.config, overrides)
        if raw_text:
            raise ConfigError(raw_text_message(raw_text, config.model.model_name_or_path))
        if not config.training.manifests:
            raise ConfigError("--manifest is required: pass the manifest.json written by `cpt-prep build` (e.g. --manifest shards/manifest.json)")
        from trainer.loop import train  # torch/transformers load only once the command line is valid

        summary = train(config)
    except TrainingError as exc:
        if _rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except CptError as exc:
        if _rank() == 0:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if _rank() == 0:
            print(f"error: interrupted{interrupted_hint(config)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _rank() == 0:
        from trainer.logs import format_summary

        print("\n".join(format_summary(summary)), flush=True)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
