"""`cpt-prep build`: inputs -> filtered, deduplicated, tokenized shards + manifest.json.

- `run`: `build_dataset`, the whole run: inputs, staging folder, tokenizer, manifest, swap.
- `stages`: scheduling of ~2 MiB chunks through worker processes (or this process for
  `--workers 1`), at most `3 * workers + 16` in flight, always in input order.
- `chunks`: the per-chunk work done in workers: the scan (decode, filter, exact key, MinHash)
  and the encode (tokenize the kept records).
- `outcomes`: the order-dependent decisions made in the main process (duplicates, max samples,
  decontamination) and the drop log.
- `staging`: the hidden staging folder, the final swap, and the removal of staging folders that
  killed builds left behind.

Imported only by `pipeline.cli`; imports the shared steps (`read`, `normalize`, `filters`,
`tokenize`, `shards`), `pipeline.dedup` and `schemas/`, never `pipeline.check`.
"""
