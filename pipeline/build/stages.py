"""Scheduling of `cpt-prep build`'s chunks: scan in workers -> decide in the main process -> encode
in workers -> write in the main process, always in input order.

- `start_pool` gives a process pool (spawned, one worker per core) or, for `--workers 1`, an
  executor that runs each task in this process when it is submitted: one code path for both.
- `ChunkStages` keeps up to `3 * workers + 16` chunks between reading and writing. Scans run ahead of
  decisions, so the workers stay busy while the main process decides and writes; the pool is
  started, and the first chunks queued, before the tokenizer is loaded (~3-5 s of imports), so
  that time overlaps with scanning.
- Memory: each chunk in flight holds its payloads (~`CHUNK_BYTES`), then its signatures
  (~0.9 KB per document) and token ids (4 bytes per token): ~5 MB; `max_in_flight` is
  `3 * workers + 16` chunks (~110 MB for 2 workers, ~320 MB for 16).
"""

from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from pipeline.build import chunks as chunks_mod
from pipeline.read import Payload

IN_FLIGHT_PER_WORKER = 3  # chunks in flight per worker in the steady state: keeps every worker busy
IN_FLIGHT_EXTRA = 16  # plus enough scans queued to cover the tokenizer load (~5 s of imports)


class Chunk(NamedTuple):
    """A run of consecutive records."""

    sources: list[int]
    lines: list[int]
    payloads: list[Payload]
    read_mark: int  # input bytes read when the chunk was complete (drives the progress bar)


class InlineExecutor:
    """The executor interface in this process: a task runs when it is submitted (`--workers 1`)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # re-raised by future.result(), as from a pool
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def start_pool(settings: chunks_mod.ScanSettings, *, workers: int) -> ProcessPoolExecutor | InlineExecutor:
    """Worker processes (spawned, each with its own single-threaded tokenizer), or this process."""
    if workers == 1:
        chunks_mod.init_worker(settings, in_pool=False)
        return InlineExecutor()
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds tokenizer threads
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=chunks_mod.init_worker, initargs=(settings,))


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


class ChunkStages:
    """Runs every chunk through scan -> decide -> encode; yields encoded chunks in input order."""

    def __init__(self, executor: ProcessPoolExecutor | InlineExecutor, chunks: Iterator[Chunk], *, workers: int) -> None:
        self.executor = executor
        self.chunks = chunks
        # In this process (one worker) a task runs when submitted: one chunk at a time is enough.
        self.max_in_flight = IN_FLIGHT_PER_WORKER * workers + IN_FLIGHT_EXTRA if workers > 1 else 1
        self._scanning: collections.deque[tuple[Chunk, Future]] = collections.deque()
        self._encoding: collections.deque[tuple[Chunk, Any, Future]] = collections.deque()
        self._more = True

    def start(self) -> None:
        """Queue scans up to the in-flight limit (call before slow setup, so workers start early)."""
        while self._more and len(self._scanning) + len(self._encoding) < self.max_in_flight:
            chunk = next(self.chunks, None)
            if chunk is None:
                self._more = False
                return
            self._scanning.append((chunk, self.executor.submit(chunks_mod.scan_chunk, chunk.sources, chunk.payloads)))

    def run(
        self,
        decide: Callable[[Chunk, chunks_mod.ScanResult], Sequence[tuple[int, str]]],
        encode_settings: chunks_mod.EncodeSettings,
    ) -> Iterator[tuple[Chunk, Sequence[tuple[int, str]], chunks_mod.Encoded]]:
        """Yield `(chunk, kept, encoded)` per chunk in input order. `decide(chunk, scan)` is called
        in input order and returns the kept records as `(index in chunk, split)`; only those are
        encoded."""
        scanning, encoding = self._scanning, self._encoding
        while True:
            self.start()
            if encoding and encoding[0][2].done():
                chunk, kept, future = encoding.popleft()
                yield chunk, kept, future.result()
            elif scanning and scanning[0][1].done():
                chunk, future = scanning.popleft()
                kept = decide(chunk, future.result())
                sources = [chunk.sources[i] for i, _ in kept]
                payloads = [chunk.payloads[i] for i, _ in kept]
                encoding.append((chunk, kept, self.executor.submit(chunks_mod.encode_chunk, encode_settings, sources, payloads)))
            elif scanning or encoding:
                heads = [queue[0][-1] for queue in (scanning, encoding) if queue]
                wait(heads, return_when=FIRST_COMPLETED)
            else:
                return

    def cancel(self) -> None:
        for *_, future in (*self._scanning, *self._encoding):
            future.cancel()
