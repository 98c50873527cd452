"""Scheduling of `cpt-prep build`'s tasks on an executor (`pipeline.executor`), always in input order:
pass 1 scans every chunk in the workers (results go to the staging folder) -> the colliding hashes
are merged per hash range in the workers -> pass 2 reads the inputs again in the same chunks,
decides each chunk in the main process, tokenizes its kept records in the workers and writes them
in the main process.

- `start_executor` gives the local process pool (or this process, for `--workers 1`) or Ray.
- `OrderedTasks` keeps up to `3 * workers + 16` tasks in flight and yields their results in
  submission order. Pass 1 is started, and its first chunks queued, before the tokenizer is
  loaded (~3-5 s of imports), so that time overlaps with scanning.
- Memory: each chunk in flight holds its payloads (~`CHUNK_BYTES`), then its token ids (4 bytes per
  token): ~5 MB; `3 * workers + 16` chunks is ~110 MB for 2 workers, ~320 MB for 16. The merge
  holds one hash range per task (`pipeline.dedup.collisions.RANGE_ENTRIES`).
"""

from __future__ import annotations

import collections
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

from pipeline.build import chunks as chunks_mod
from pipeline.dedup import collisions
from pipeline.executor.local import start_local
from pipeline.read import Payload

IN_FLIGHT_PER_WORKER = 3  # tasks in flight per worker in the steady state: keeps every worker busy
IN_FLIGHT_EXTRA = 16  # plus enough scans queued to cover the tokenizer load (~5 s of imports)
EXECUTORS = ("local", "ray")


class Chunk(NamedTuple):
    """A run of consecutive records."""

    sources: list[int]
    lines: list[int]
    payloads: list[Payload]
    read_mark: int  # input bytes read when the chunk was complete (drives the progress bar)


def start_executor(kind: str, settings: chunks_mod.ScanSettings, *, workers: int, ray_address: Optional[str] = None):
    """The chosen executor, its workers set up with `settings` (see `pipeline.executor`)."""
    if kind == "ray":
        from pipeline.executor.ray import RayExecutor

        return RayExecutor(chunks_mod.init_worker, (settings,), workers=workers, address=ray_address)
    return start_local(chunks_mod.init_worker, (settings,), workers=workers)


def max_in_flight(kind: str, workers: int) -> int:
    # In this process (one local worker) a task runs when submitted: one at a time is enough.
    return IN_FLIGHT_PER_WORKER * workers + IN_FLIGHT_EXTRA if workers > 1 or kind != "local" else 1


def chunked(records: Iterator[tuple[int, int, Any]], chunk_bytes: int, bytes_read: Callable[[], int]) -> Iterator[Chunk]:
    """Runs of consecutive records of ~chunk_bytes payload."""
    sources: list[int] = []
    lines: list[int] = []
    payloads: list[Any] = []
    size = 0
    for source_index, line, payload in records:
        sources.append(source_index)
        lines.append(line)
        payloads.append(payload)
        size += len(payload) + 16 if payload else 16
        if size >= chunk_bytes:
            yield Chunk(sources, lines, payloads, bytes_read())
            sources, lines, payloads, size = [], [], [], 0
    if sources:
        yield Chunk(sources, lines, payloads, bytes_read())


class OrderedTasks:
    """Submits `(item, fn, args)` tasks from an iterator, at most `max_in_flight` at a time, and
    yields `(item, result)` in submission order. The iterator is advanced lazily, so work it does
    (pass 2's decisions) runs ahead of the results by at most the in-flight limit."""

    def __init__(self, executor, tasks: Iterator[tuple[Any, Callable[..., Any], tuple]], *, max_in_flight: int) -> None:
        self.executor = executor
        self.tasks = tasks
        self.max_in_flight = max_in_flight
        self._queue: collections.deque[tuple[Any, Future]] = collections.deque()
        self._more = True

    def start(self) -> None:
        """Submit tasks up to the in-flight limit (call before slow setup, so workers start early)."""
        while self._more and len(self._queue) < self.max_in_flight:
            task = next(self.tasks, None)
            if task is None:
                self._more = False
                return
            item, fn, args = task
            self._queue.append((item, self.executor.submit(fn, *args)))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while True:
            self.start()
            if not self._queue:
                return
            item, future = self._queue.popleft()
            yield item, future.result()

    def cancel(self) -> None:
        for _, future in self._queue:
            future.cancel()


def scan_tasks(chunks: Iterator[Chunk], folder: Path) -> Iterator[tuple[tuple[int, int], Callable[..., Any], tuple]]:
    """Pass 1: one scan task per chunk; the item is `(number of records, read mark)`."""
    for c, chunk in enumerate(chunks):
        yield (len(chunk.sources), chunk.read_mark), chunks_mod.scan_chunk, (c, chunk.sources, chunk.payloads, str(folder))


def merge_collisions(executor, folder: Path, *, num_chunks: int, num_candidates: int, num_bands: int, max_in_flight: int) -> collisions.Collisions:
    """Every colliding exact key and band hash of the scanned chunks, merged per hash range."""
    results: dict[str, list] = {"exact": [], "bands": []}
    if num_chunks:
        tasks = [
            (kind, collisions.colliding_in_range, (str(folder), kind, num_chunks, lo, hi))
            for kind, per_doc in (("exact", 1), ("bands", num_bands))
            if per_doc
            for lo, hi in collisions.hash_ranges(num_candidates * per_doc)
        ]
        for kind, found in OrderedTasks(executor, iter(tasks), max_in_flight=max_in_flight):
            results[kind].append(found)
    return collisions.Collisions(results["exact"], results["bands"])
