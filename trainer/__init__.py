"""`cpt-train`: continued pre-training from one or several `cpt-prep` manifests with Accelerate.

Modules, in the order a run uses them: `cli` (the command line) -> `build` (build everything from the
config, before and after the weights load) -> `sources` (each manifest verified, named, weighted,
opened) with `verify` (a manifest, the tokenizer and the data config, before any weights load) and
`data` (packed, memory-mapped windows; the eval loader) -> `mixture` (the training loader: which
source each window comes from, each source's seeded passes, the resume position) -> `modeling`
(loading, the one forward, the chunked loss) -> `optim` (AdamW, schedules, the step plan) -> `loop`
(the step and the fit loop) with its helpers `guard` (skipped steps: non-finite values, spikes),
`evaluate` (per source and combined), `checkpoint` (atomic saves, exact resume, lineage) and `logs`
(metrics, trackers, summary).

Imports `schemas/` only, never `pipeline/`; never reads raw text and never tokenizes.
"""
