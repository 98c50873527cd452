"""`cpt-train`: continued pre-training from a `cpt-prep` manifest with Accelerate.

Modules, in the order a run uses them: `cli` (the command line) -> `verify` (the manifest, the
tokenizer and the data config, before any weights load) -> `data` (packed, memory-mapped,
resumable windows) -> `modeling` (loading, the one forward, the chunked loss) -> `optim` (AdamW,
schedule, step plan) -> `loop` (build everything from the config, then fit) with its helpers
`evaluate`, `checkpoint` (atomic saves, exact resume) and `logs` (metrics, trackers, summary).

Imports `schemas/` only, never `pipeline/`; never reads raw text and never tokenizes.
"""
