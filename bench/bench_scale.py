"""Benchmark `cpt-prep build` at scale: memory of the whole build and of its dedup state, in-memory
engine (a reference checkout, e.g. the previous main) vs the on-disk engine, local vs Ray.

For each corpus, runs alternate: reference build, local build, Ray build (`--executor ray`, a Ray
instance started by the build with --workers CPUs), `--repeats` times. Each is `cpt-prep build`
in a fresh process (PYTHONPATH = its checkout), timed wall-clock, with the peak of the RSS summed
over the build and every process it started (workers; Ray's raylet, GCS and workers), sampled
every 0.5 s. Printed per run and as ratios: local / reference (time, peak memory), ray / local.

Dedup state per input document:
- on-disk engine: what the build reports (`dedup:` log line: the colliding entries held in memory
  plus ~100 bytes per stored colliding document) and its hash files on disk;
- in-memory engine: its state rebuilt here at the build's size, with the reference checkout's own
  classes: `NearDuplicateIndex` over as many random signatures as the build kept documents (its
  `nbytes`), plus the exact-key dict (measured with sys.getsizeof) and 25 bytes of candidate
  arrays per document (8+8+8+1, `_Candidates`).

Corpora: `--corpus FILE` (default bench_out/corpus.txt, from bench/make_bench_corpus.py) and, with
`--short_docs N`, N short distinct generated documents (~12 random words of a 5,000-word
vocabulary each, seeded; written once to bench_out/short-N.txt).

Usage: python bench/bench_scale.py --ref /tmp/ref [--corpus bench_out/corpus.txt] [--short_docs 10000000]
       [--workers 2] [--repeats 1] [--engines ref,local,ray]
Run it under `flock /tmp/cpt-bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prep import _tree_memory, tokenizer_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def short_corpus(num_docs: int) -> Path:
    path = REPO / "bench_out" / f"short-{num_docs}.txt"
    if not path.exists():
        rng = random.Random(0)
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(6000)})[:5000]
        path.parent.mkdir(exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i in range(num_docs):
                f.write(" ".join(rng.choices(vocab, k=12)) + f" {i}\n")  # the number keeps every line distinct
    return path


def run_build(checkout: Path, corpus: Path, workers: int, executor: str) -> dict:
    with tempfile.TemporaryDirectory(dir=REPO / "bench_out") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pipeline", "--log_level", "INFO", "build", str(corpus), "--tokenizer", str(tokenizer_file().parent),
               "--output", str(out), "--workers", str(workers), "--no_progress"]
        if executor == "ray":
            cmd += ["--executor", "ray"]
        if checkout == REPO:  # the engines compared, not the encoders: the reference checkout only has HF
            cmd += ["--tokenizer_backend", "hf"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout)}
        t0 = time.perf_counter()
        popen = subprocess.Popen(cmd, cwd=checkout, env=env, stderr=subprocess.PIPE, text=True)
        proc = psutil.Process(popen.pid)
        peak = 0
        while popen.poll() is None:
            peak = max(peak, _tree_memory(proc, with_pss=False)[0])
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        err = popen.stderr.read()
        if popen.returncode != 0:
            raise SystemExit(f"cpt-prep build failed ({popen.returncode}):\n{err}")
        manifest = json.loads((out / "manifest.json").read_text())
    run = {"seconds": seconds, "peak_rss": peak, "num_records": manifest["accounting"]["num_records"], "kept": sum(manifest["accounting"]["kept"].values())}
    found = re.search(r"dedup: (\d+) colliding hashes in memory \(([\d.]+) bytes per record\), ([\d.]+) MB of hash files", err)
    if found:
        run.update(colliding=int(found[1]), state_per_doc=float(found[2]), hash_file_mb=float(found[3]))
    timing = re.search(r"timing: ([\d.]+) s setup.*?, ([\d.]+) s scanning, ([\d.]+) s merging hashes, ([\d.]+) s tokenizing", err)
    if timing:
        run.update(setup_s=float(timing[1]), scan_s=float(timing[2]), merge_s=float(timing[3]), tokenize_s=float(timing[4]))
    main = re.search(r"; ([\d.]+) s deciding and writing in the main process", err)
    if main:
        run["main_s"] = float(main[1])
    return run


def in_memory_state_bytes(checkout: Path, num_docs: int) -> float:
    """Bytes per document of the in-memory engine's dedup state for `num_docs` kept documents."""
    code = f"""
import sys, numpy as np
from pipeline.dedup.lsh import NearDuplicateIndex
n = {num_docs}
rng = np.random.default_rng(0)
index = NearDuplicateIndex(num_bands=14, rows_per_band=8)
exact = {{}}
for start in range(0, n, 100_000):
    m = min(100_000, n - start)
    sig = rng.integers(0, 2**61, size=(m, 112), dtype=np.uint64)
    index.add_if_new_batch(list(range(start, start + m)), sig)
    for k, o in zip(rng.integers(0, 2**63, size=m, dtype=np.uint64).tolist(), range(start, start + m)):
        exact[k] = o
dict_bytes = sys.getsizeof(exact) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in exact.items())
print((index.nbytes + dict_bytes + 25 * n) / n)
"""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="checkout with the in-memory engine (git archive main)")
    parser.add_argument("--corpus", type=Path, nargs="*", default=[REPO / "bench_out" / "corpus.txt"])
    parser.add_argument("--short_docs", type=int, default=0, help="also a corpus of this many short distinct documents")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--engines", default="ref,local,ray")
    args = parser.parse_args(argv)
    corpora = [c.resolve() for c in args.corpus] + ([short_corpus(args.short_docs)] if args.short_docs else [])
    engines = args.engines.split(",")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; load average {os.getloadavg()[0]:.2f}; workers {args.workers}", flush=True)
    results = {}
    for corpus in corpora:
        mb = corpus.stat().st_size / 1e6
        runs: dict[str, list[dict]] = {e: [] for e in engines}
        for _ in range(args.repeats):
            for engine in engines:
                run = run_build(args.ref.resolve() if engine == "ref" else REPO, corpus, args.workers, "ray" if engine == "ray" else "local")
                runs[engine].append(run)
                extra = f", dedup state {run['state_per_doc']:.2f} B/doc in RAM, {run['hash_file_mb']:.0f} MB hash files" if "state_per_doc" in run else ""
                stages = f" (scan {run['scan_s']:.0f} s, merge {run['merge_s']:.1f} s, tokenize {run['tokenize_s']:.0f} s; main process deciding and writing {run['main_s']:.1f} s)" if "scan_s" in run else ""
                print(f"{corpus.name} {engine:5s}: {run['seconds']:.1f} s{stages}, {mb / run['seconds']:.2f} MB/s, peak RSS (all processes) {run['peak_rss'] / 2**20:,.0f} MiB{extra}; "
                      f"{run['num_records']:,} records, {run['kept']:,} kept", flush=True)
        mean = {e: {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if isinstance(rs[0][k], (int, float))} for e, rs in runs.items() if rs}
        if "ref" in mean:
            mean["ref"]["state_per_doc"] = in_memory_state_bytes(args.ref.resolve(), int(mean["ref"]["kept"]))
        line = [f"{corpus.name}: {mb:.0f} MB, {int(next(iter(mean.values()))['num_records']):,} documents"]
        for e, m in mean.items():
            line.append(f"{e}: {m['seconds']:.1f} s, peak {m['peak_rss'] / 2**20:,.0f} MiB, dedup state {m.get('state_per_doc', float('nan')):.1f} B/doc")
        if "ref" in mean and "local" in mean:
            line.append(f"local/ref: time {mean['local']['seconds'] / mean['ref']['seconds']:.2f}x, peak memory {mean['local']['peak_rss'] / mean['ref']['peak_rss']:.2f}x")
        if "ray" in mean and "local" in mean:
            line.append(f"ray/local: time {mean['ray']['seconds'] / mean['local']['seconds']:.2f}x, peak memory {mean['ray']['peak_rss'] / mean['local']['peak_rss']:.2f}x")
        print("\n  ".join(line), flush=True)
        results[corpus.name] = {"mb": mb, "runs": runs, "mean": mean}
    (REPO / "bench_out" / "scale.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
