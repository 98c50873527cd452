"""`cpt-prep build`: inputs -> filtered, deduplicated, tokenized shards + manifest.json.

- `run`: `build_dataset`, the whole run: inputs, staging folder, tokenizer, manifest, swap.
- `stages`: scheduling of ~2 MiB chunks on an executor (`pipeline.executor`: a local process
  pool, this process for `--workers 1`, or Ray): pass 1 scans every chunk, the hash files are
  merged per hash range, pass 2 decides, tokenizes and writes; at most `3 * workers + 16` tasks in
  flight, always in input order.
- `chunks`: the per-chunk work done in workers: the scan (decode, filter, exact key, MinHash band
  hashes, written to the staging folder) and the encode (tokenize the kept records).
- `outcomes`: the order-dependent decisions made in the main process (duplicates, max samples,
  decontamination) over the colliding documents only, and the drop log.
- `staging`: the hidden staging folder, the final swap, and the removal of staging folders that
  killed builds left behind.

Imported only by `pipeline.cli`; imports the shared steps (`read`, `normalize`, `filters`,
`tokenize`, `shards`), `pipeline.dedup`, `pipeline.executor` and `schemas/`, never `pipeline.check`.
"""
