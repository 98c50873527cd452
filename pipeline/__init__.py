"""`cpt-prep`: read, filter, deduplicate and tokenize a corpus into Arrow token shards + manifest,
and check a prepared data set.

Layout (the folder is the architecture):
- `cli`, `__main__`: the `cpt-prep` command line (`build`, `check`).
- Steps both programs share, one module each: `read` (input discovery, streaming records),
  `normalize` (text folded for hashing only), `filters` (empty / too short), `shards` (the Arrow
  shard writer).
- `tokenize/`: the tokenizer, its identity and the document encoders (`hf`, the reference; `fast`,
  tiktoken where a certificate proves it exact), the cross-check against HF.
- `dedup/`: exact keys, MinHash signatures, band hashes and the on-disk collision files.
- `executor/`: where the build's tasks run: `local` (a process pool) or `ray` (a Ray cluster).
- `build/`: the `cpt-prep build` program (scheduling, worker passes, outcomes, staging, the run).
- `check/`: the `cpt-prep check` program (quality rules, output, report, `cpt-prep dropped`); its
  structural rules live in `schemas/verify/`, shared with `cpt-train`.

Imports: `schemas/` and itself only, never `trainer/`, and no torch model code. `build/` and
`check/` never import each other; only `cli` imports them. A test (tests/unit/test_layout.py) walks
every import and refuses cycles.
"""
