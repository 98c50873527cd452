"""`cpt-prep`: read, filter, deduplicate and tokenize a corpus into Arrow token shards + manifest,
and check a prepared data set.

Layout (the folder is the architecture):
- `cli`, `__main__`: the `cpt-prep` command line (`build`, `check`).
- Steps both programs share, one module each: `read` (input discovery, streaming records),
  `normalize` (text folded for hashing only), `filters` (empty / too short), `tokenize` (the
  tokenizer, its identity, the document encoder), `shards` (the Arrow shard writer).
- `dedup/`: exact keys and MinHash LSH near-duplicate detection.
- `build/`: the `cpt-prep build` program (scheduling, worker passes, outcomes, the run).
- `check/`: the `cpt-prep check` program (structural checks, quality rules, output, report).

Imports: `schemas/` and itself only, never `trainer/`, and no torch model code. Inside, the
shared step modules import no subpackage; `dedup/` imports only shared steps; `build/` and `check/`
may import the shared steps and `dedup/`, never each other; only `cli` imports `build/` and
`check/`. A test (tests/unit/test_layout.py) walks every import and refuses cycles.
"""
