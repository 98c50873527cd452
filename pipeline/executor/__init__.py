"""Executors: where `cpt-prep build` runs its per-chunk tasks (scan, band merge, tokenize).

- `local`: this machine's process pool (spawned workers that exit within seconds when the main
  process dies), or the main process itself for one worker (`InlineExecutor`).
- `ray`: the same task functions as Ray tasks, on a running cluster (`--ray_address`) or on a
  Ray instance started on this machine for the build; imported only when chosen (`pip install
  '.[ray]'`).

Every executor has `submit(fn, *args) -> concurrent.futures.Future` and `shutdown(wait,
cancel_futures)`, runs `initializer(*initargs)` once per worker process before its first task, and
raises one of `local.LOST_WORKER_ERRORS` from a future whose worker died beyond what it retries. Task functions must be
module-level (importable by name on every worker) and deterministic: a retried task gives the same
result.

Imported by `pipeline.build` (`start_executor`); imports only the standard library (and Ray, lazily).
"""
