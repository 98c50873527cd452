"""MinHash throughput: pipeline.dedup.MinHasher vs datasketch.MinHash on the same real text.

Both sides start from the ORIGINAL text and produce a 112-value signature per document with the
same normalization and the same shingles (word 5-grams, CJK character 5-grams):
- ours: `MinHasher.keys_and_signatures(texts)` (batched; also computes the exact keys), and
  `MinHasher.signature(text)` one document at a time;
- datasketch: `normalize_for_hash`, Python string shingles, `MinHash(num_perm=112).update_batch`
  (its default scheme and hash function), one document at a time as it is normally used.

Timed side by side in one run (CPU time of this process, best of --repeat), since the machine is
shared and wall-clock timings are noisy. Prints MB/s for English, Chinese and the mixed sample,
and the ratio ours / datasketch; then exact_key one document at a time, and NearDuplicateIndex
throughput (batched and one by one) and bytes per indexed document.

    python bench/bench_minhash.py [--input data/sample/train.txt] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.dedup.lsh import NearDuplicateIndex  # noqa: E402
from pipeline.dedup.minhash import CJK_PATTERN, MinHasher, reference_shingles  # noqa: E402
from pipeline.normalize import exact_key, normalize_for_hash  # noqa: E402


def datasketch_signatures(texts: list[str], num_perm: int) -> list:
    from datasketch import MinHash

    out = []
    for text in texts:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in reference_shingles(normalize_for_hash(text))])
        out.append(m.hashvalues)
    return out


def cpu_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=REPO / "data" / "sample" / "train.txt")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--num_perm", type=int, default=112)
    parser.add_argument("--index_docs", type=int, default=500_000, help="documents for the index timing")
    args = parser.parse_args(argv)

    lines = [line.rstrip("\r\n") for line in args.input.open(encoding="utf-8")]
    lines = [line for line in lines if line.strip()]
    sets = {
        "English": [t for t in lines if not CJK_PATTERN.search(t)],
        "Chinese": [t for t in lines if len(CJK_PATTERN.findall(t)) > 0.5 * len(t)],
        "mixed (whole file)": lines,
    }
    hasher = MinHasher(num_perm=args.num_perm, seed=1, word_ngram=5, char_ngram=5)
    hasher.keys_and_signatures(lines[:100])  # build the per-process tables outside the timing
    print(f"{'text':20s} {'MB':>6s} {'docs':>6s} {'ours batch':>11s} {'ours 1-by-1':>12s} {'datasketch':>11s} {'ratio':>6s}")
    for name, texts in sets.items():
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        ours = cpu_seconds(lambda: hasher.keys_and_signatures(texts), args.repeat)
        single = cpu_seconds(lambda: [hasher.signature(t) for t in texts], args.repeat)
        ds = cpu_seconds(lambda: datasketch_signatures(texts, args.num_perm), args.repeat)
        print(f"{name:20s} {mb:6.2f} {len(texts):6d} {mb / ours:8.1f} MB/s {mb / single:8.1f} MB/s {mb / ds:8.1f} MB/s {ds / ours:5.1f}x")
    print("MB/s = UTF-8 megabytes per CPU second of this process (best of --repeat); ratio = datasketch time / ours (batch)")

    # The per-document calls a pipeline might make instead of keys_and_signatures.
    mb = sum(len(t.encode("utf-8")) for t in lines) / 1e6
    keys_single = cpu_seconds(lambda: [exact_key(t) for t in lines], args.repeat)
    print(f"exact_key one by one: {mb / keys_single:.1f} MB/s, {len(lines) / keys_single:,.0f} docs/s")

    # NearDuplicateIndex on random signatures (every document new: the common, most expensive case).
    rng = np.random.default_rng(0)
    num_docs = args.index_docs
    sigs = rng.integers(0, 2**61, (num_docs, args.num_perm), dtype=np.uint64)
    index = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    start = time.process_time()
    for lo in range(0, num_docs, 2000):
        index.add_if_new_batch(range(lo, min(lo + 2000, num_docs)), sigs[lo : lo + 2000])
    batch_s = time.process_time() - start
    extra = sigs[:20000] ^ np.uint64(1)
    start = time.process_time()
    for k, sig in enumerate(extra):
        index.add_if_new(num_docs + k, sig)
    single_s = time.process_time() - start
    print(f"NearDuplicateIndex, {num_docs:,} documents: add_if_new_batch {num_docs / batch_s:,.0f} docs/s; "
          f"add_if_new {len(extra) / single_s:,.0f} docs/s; {index.nbytes / len(index):.0f} bytes/document")
    return 0


if __name__ == "__main__":
    sys.exit(main())
