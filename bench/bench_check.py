"""Benchmark the structural pass that `cpt-prep check` and `cpt-train` share (schemas.verify)
against sha256 alone and a per-row Python scan.

Writes a synthetic data set with `pipeline.shards.write_token_dataset` (uint32 ids, the Qwen2
tokenizer's identity, random documents of 20-480 tokens), warms the page cache, then times, in
`--repeats` rounds that alternate baseline and candidates (load on a shared machine drifts):
(a) baseline: hashlib sha256 of every shard (the least any integrity check must do);
(b) `cpt-train`'s verification before step 0 (`trainer.verify.load_verified_manifest`, sha256 on);
(c) `cpt-prep check`'s structural checks with checksums (`run_checks`, sample 0: also the document
    hashes for the overlap rules);
(d) `cpt-train`'s verification with `verify_checksums false` (the memory-mapped numpy scan alone);
(e) reference: the same rules over Python lists per row, on one shard, scaled to all.
Each line gives the median over the rounds and its ratio to the baseline of the same rounds.

Usage: python bench/bench_check.py [--out bench_out/check] [--tokens 1e8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.check.rules import RulesConfig  # noqa: E402
from pipeline.check.run import run_checks  # noqa: E402
from pipeline.shards import write_token_dataset  # noqa: E402
from pipeline.tokenize.load import load_tokenizer, tokenizer_info  # noqa: E402
from schemas.manifest import open_shard, read_manifest, sha256_file  # noqa: E402
from schemas.tokenizer import bundled_tokenizer_dir  # noqa: E402
from trainer.verify import load_verified_manifest  # noqa: E402

SHARD_BYTES = 128 * 2**20


def random_documents(num_tokens: int, vocab_limit: int, seed: int = 0):
    """Documents of 20-480 ids below `vocab_limit` (no separator: the writer appends it)."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < num_tokens:
        n = int(min(rng.integers(20, 480), num_tokens - made))
        yield rng.integers(0, vocab_limit, size=n, dtype=np.uint32)
        made += n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="cpt-prep check structural pass vs sha256 alone")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "check")
    parser.add_argument("--tokens", type=float, default=1e8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of baseline + candidates (default 3)")
    args = parser.parse_args(argv)
    folder = str(bundled_tokenizer_dir())
    info = tokenizer_info(load_tokenizer(folder), name_or_path=folder)
    t0 = time.perf_counter()
    manifest_path = write_token_dataset(args.out, {"train": random_documents(int(args.tokens), info.separator_id)}, tokenizer=info, target_bytes=SHARD_BYTES, note="bench_check synthetic")
    manifest = read_manifest(manifest_path)
    shards = manifest.splits["train"].shards
    num_tokens = manifest.splits["train"].num_tokens
    num_bytes = sum(s.num_bytes for s in shards)
    print(f"data: {len(shards)} shards, {manifest.splits['train'].num_documents:,} documents, {num_tokens:,} tokens, {num_bytes / 1e6:.0f} MB (written in {time.perf_counter() - t0:.1f} s)", flush=True)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for shard in shards:  # warm the page cache once, so every variant reads from memory
        (args.out / shard.path).read_bytes()
    variants = {
        "baseline: hashlib sha256 of every shard": lambda: [sha256_file(args.out / s.path) for s in shards],
        "cpt-train verification (sha256 + structural scan)": lambda: load_verified_manifest(manifest_path, checksums=True),
        "cpt-prep check structural (sha256 + scan + doc hashes)": lambda: run_checks(read_manifest(manifest_path), manifest_path, RulesConfig(), sample=0),
        "cpt-train verification, verify_checksums false": lambda: load_verified_manifest(manifest_path, checksums=False),
    }
    seconds: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.repeats):
        for label, fn in variants.items():
            seconds[label].append(timed(fn))
    median = {label: float(np.median(v)) for label, v in seconds.items()}
    base = median["baseline: hashlib sha256 of every shard"]
    for label, v in seconds.items():
        m = median[label]
        runs = ", ".join(f"{x:.2f}" for x in v)
        print(f"{label:58s} {m:7.2f} s  {num_bytes / 1e6 / m:6.0f} MB/s  {num_tokens / 1e6 / m:6.1f} Mtok/s  {m / base:5.2f} x sha256  ({runs})", flush=True)
    scan_s, full_s = median["cpt-train verification, verify_checksums false"], median["cpt-train verification (sha256 + structural scan)"]

    sep, vocab = info.separator_id, info.vocab_size
    t = time.perf_counter()
    bad = 0
    for row in open_shard(args.out / shards[0].path).column("input_ids").to_pylist():
        bad += row[-1] != sep or max(row) >= vocab or sep in row[:-1]
        hash(tuple(row[:-1]))  # the exact-overlap key
    naive_s = (time.perf_counter() - t) * num_tokens / shards[0].num_tokens
    print(f"{'reference: python lists per row (1 shard, scaled to all)':58s} {naive_s:7.2f} s", flush=True)
    print(f"scan without sha256 is {naive_s / scan_s:.0f}x faster than python lists per row; cpt-train's verification = {full_s / base:.2f} x sha256 alone, "
          f"{full_s - base:.2f} s on top of it for {num_tokens:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
