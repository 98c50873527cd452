"""`cpt-prep check`: the data-quality gate over a manifest and its shards (exit 0 / 1 / 2).

- `run`: the subcommand's arguments and `run_checks`, which runs everything in order.
- `outcome`: `CheckOutcome`, the results and measurements of one run (shared by the modules below
  that present it, so that none of them imports `run`).
- `formats`: `--format text|json|github`; `report`: the self-contained HTML report and its plots.
- `dropped`: `cpt-prep dropped`, the dropped records with their text read back from the inputs
  (also the report's examples per reason).
- Structural checks (always on, one pass over the data): `shards` (files, rows, token ids,
  per-document hashes), `dataset` (totals, accounting, duplicate clusters, exact overlap).
- Quality rules (configurable): `rules` (the rules file and `RuleResult`), `quality` (rules on
  counts and histograms), `text` (rules on a decoded sample), `text_quality` (Gopher, C4, FineWeb
  heuristics and script counts), `near` (the independent near-duplicate re-check).

Imported only by `pipeline.cli`; imports the shared steps, `pipeline.dedup` and `schemas/`, never
`pipeline.build`.
"""
