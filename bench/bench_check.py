"""Benchmark: `cpt-prep check` structural pass on synthetic shards (uint32, Qwen2 vocab) vs baselines.

usage: python bench/bench_check.py OUT_DIR [NUM_TOKENS]   (e.g. bench_out/check 1e8)
"""
import hashlib, json, sys, time, subprocess
from pathlib import Path
import numpy as np, pyarrow as pa
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from schemas.manifest import *
from schemas.tokenizer import bundled_tokenizer_dir
from transformers import AutoTokenizer
from schemas.tokenizer import control_token_ids, tokenizer_fingerprint

out = Path(sys.argv[1]); total = int(float(sys.argv[2])) if len(sys.argv) > 2 else 100_000_000
out.mkdir(parents=True, exist_ok=True)
tok = AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))
SEP = 151643; V = len(tok)
rng = np.random.default_rng(0)
shards = []
per_shard = 32_000_000
made = 0; k = 0
t0 = time.time()
while made < total:
    n_tok = min(per_shard, total - made)
    lens = rng.integers(20, 480, size=n_tok // 250 + 10)
    lens = lens[np.cumsum(lens) <= n_tok]
    if len(lens) == 0:
        break
    vals = rng.integers(0, 151643, size=int(lens.sum()), dtype=np.uint32)
    ends = np.cumsum(lens); vals[ends - 1] = SEP
    rel = f"train/train-{k:05d}.arrow"; p = out / rel; p.parent.mkdir(exist_ok=True)
    schema = shard_schema("uint32")
    with pa.OSFile(str(p), "wb") as f, pa.ipc.new_stream(f, schema) as w:
        offs = np.concatenate([[0], ends]).astype(np.int64)
        for s in range(0, len(lens), 1024):
            o = offs[s:s + 1025]
            col = pa.ListArray.from_arrays(pa.array((o - o[0]).astype(np.int32)), pa.array(vals[o[0]:o[-1]]))
            m = len(o) - 1
            w.write_batch(pa.record_batch([col, pa.array(np.zeros(m, np.uint32)), pa.array(np.arange(s + 1, s + m + 1, dtype=np.uint64))], schema=schema))
    shards.append(ShardInfo(path=rel, num_documents=len(lens), num_tokens=int(lens.sum()), num_bytes=p.stat().st_size, sha256=sha256_file(p)))
    made += int(lens.sum()); k += 1
docs = sum(s.num_documents for s in shards)
m = Manifest(tool_version="bench", created_at="x", inputs=[InputFileInfo(path="x.txt", role="train", num_bytes=0, sha256="0")], config={}, dedup={},
             tokenizer=TokenizerInfo(name_or_path=str(bundled_tokenizer_dir()), class_name="Qwen2Tokenizer", vocab_size=V, separator_token="<|endoftext|>",
                                     separator_id=SEP, control_token_ids=control_token_ids(tok), fingerprint=tokenizer_fingerprint(tok)),
             token_dtype="uint32", splits={"train": SplitInfo(num_documents=docs, num_tokens=made, shards=shards), "eval": SplitInfo(0, 0, [])},
             accounting=Accounting(num_records=docs, kept={"train": docs, "eval": 0}, dropped={}))
write_manifest(m, out)
nbytes = sum(s.num_bytes for s in shards)
print(flush=True); print(f"data: {len(shards)} shards, {docs:,} documents, {made:,} tokens, {nbytes/1e6:.0f} MB (made in {time.time()-t0:.1f} s)")

def timed(label, fn):
    t = time.perf_counter(); r = fn(); dt = time.perf_counter() - t
    print(f"{label:58s} {dt:7.2f} s  {nbytes/1e6/dt:8.0f} MB/s  {made/1e6/dt:7.1f} Mtok/s", flush=True)
    return dt

# warm the page cache once so every variant reads from memory
for s in shards: (out / s.path).read_bytes()
t_sha = timed("baseline: hashlib sha256 of every shard", lambda: [sha256_file(out / s.path) for s in shards])
from pipeline.check import run_checks
from pipeline.rules import RulesConfig
mp = out / "manifest.json"
t_full = timed("cpt-prep check structural (sha256 + scan), --sample 0", lambda: run_checks(read_manifest(mp), mp, RulesConfig(), sample=0))
t_scan = timed("cpt-prep check structural, --no_checksums --sample 0", lambda: run_checks(read_manifest(mp), mp, RulesConfig(), sample=0, checksums=False))
def naive():
    table = open_shard(out / shards[0].path)
    bad = 0
    for row in table.column("input_ids").to_pylist():
        if row[-1] != SEP or max(row) >= V or SEP in row[:-1]: bad += 1
        hash(tuple(row[:-1]))
    return bad
t = time.perf_counter(); naive(); dt_naive = (time.perf_counter() - t) * made / shards[0].num_tokens
print(f"{'reference: python lists per row (1 shard, scaled to all)':58s} {dt_naive:7.2f} s")
print(f"scan without sha256 is {dt_naive / t_scan:.0f}x faster than python lists per row; full check = {t_full / t_sha:.2f} x sha256 alone")
