"""Build the same inputs with two checkouts of the toolkit and compare every output file by sha256.

Used to show that a change of the build's engine (here: the on-disk dedup that replaced the
in-memory index) leaves its output byte-identical: shards, drop log and manifest, with
SOURCE_DATE_EPOCH pinned so that `created_at` matches too. Each configuration runs `cpt-prep build`
from both checkouts (PYTHONPATH = the checkout, this venv's packages) and prints one line per
configuration: OK, or the files that differ.

Usage: python bench/compare_builds.py --ref /tmp/ref [--candidate .] [--corpus FILE ...] [--workers 2]
  (get a reference checkout with `git archive main | tar -x -C /tmp/ref`)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
CONFIGS = {  # name -> extra cpt-prep build arguments
    "default": [],
    "eval_fraction": ["--eval_fraction", "0.05", "NO_EVAL"],
    "max_samples": ["--max_train_samples", "150", "--max_eval_samples", "5"],
    "no_decontaminate": ["--decontaminate", "false"],
    "cross_only": ["--filter_duplicates", "false"],
    "small_chunks_char": ["--dedup_word_ngram", "3", "--dedup_num_bands", "20", "--dedup_rows_per_band", "5"],
}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def build(checkout: Path, inputs: list[str], eval_inputs: list[str], extra: list[str], out: Path, workers: int) -> dict[str, str]:
    from schemas.tokenizer import bundled_tokenizer_dir

    args = [sys.executable, "-m", "pipeline", "--log_level", "WARNING", "build", *inputs]
    if eval_inputs and "NO_EVAL" not in extra:
        args += ["--eval", *eval_inputs]
    args += ["--tokenizer", str(bundled_tokenizer_dir()), "--output", str(out), "--workers", str(workers), "--no_progress"]
    args += [a for a in extra if a != "NO_EVAL"]
    env = {**os.environ, "PYTHONPATH": str(checkout), "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run(args, check=True, env=env, cwd=checkout)
    return digests(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="reference checkout (e.g. git archive main)")
    parser.add_argument("--candidate", type=Path, default=REPO)
    parser.add_argument("--corpus", nargs="*", default=None, help="training inputs (default: the bundled sample, with its eval file)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.corpus:
        inputs, eval_inputs = args.corpus, []
    else:
        inputs, eval_inputs = [str(SAMPLE / "train.txt"), str(SAMPLE / "extra.jsonl.gz")], [str(SAMPLE / "eval.txt")]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            ref = build(args.ref.resolve(), inputs, eval_inputs, CONFIGS[name], Path(tmp) / f"{name}-ref", args.workers)
            new = build(args.candidate.resolve(), inputs, eval_inputs, CONFIGS[name], Path(tmp) / f"{name}-new", args.workers)
            differ = sorted(k for k in ref.keys() | new.keys() if ref.get(k) != new.get(k))
            failed += bool(differ)
            print(f"{name:18s} {'OK' if not differ else 'DIFFER'}  {len(ref)} files" + (f"; differ: {differ}" if differ else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
