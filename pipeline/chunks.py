"""The per-document work of `cpt-prep build`, done on chunks of records in worker processes.

A chunk is a run of consecutive records (~`CHUNK_BYTES` of payload). For each record a worker
decodes, filters, hashes (exact key, MinHash signature, eval-assignment hash) and tokenizes; it
decides nothing that depends on other documents. The main process applies the order-dependent
decisions (duplicates, max samples) serially in input order, so the output is byte-identical
whatever the number of workers or the chunk size.

Cost per MB of text (Qwen2, 2-core machine): tokenization ~0.7-1 s, MinHash and the rest well under
that; a result holds the ids (4 bytes/token) and signatures (8 bytes x num_perm per document).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import xxhash

from pipeline.filters import filter_text
from pipeline.read import Payload, decode_record
from pipeline.tokenize import DocumentEncoder
from schemas.manifest import DROP_REASONS

CHUNK_BYTES = 2 * 2**20  # ~2 MiB of text per task: ~1-2 s of work, small next to the pool's overhead
REASON_CODES = {reason: code for code, reason in enumerate(DROP_REASONS, start=1)}  # 0 = candidate


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs (pickled once per worker at start)."""

    formats: tuple[str, ...]  # per source_index: txt | jsonl | parquet
    text_field: str
    min_length: int
    minhash: Optional[dict[str, Any]]  # MinHasher kwargs, None when no near-duplicate detection runs
    eval_fraction: float  # > 0 only when eval documents are assigned by hash
    split_seed: int
    backend_json: str  # pipeline.tokenize.plain_text_backend_json
    separator_id: int
    control_ids: tuple[int, ...]
    token_dtype: str


@dataclass
class ChunkResult:
    """Per-record facts of one chunk; arrays over candidates follow record order."""

    reasons: np.ndarray  # int8 per record: 0 = candidate, else REASON_CODES[reason]
    keys: np.ndarray  # uint64 per candidate: pipeline.dedup.exact_key
    is_eval: np.ndarray  # bool per candidate: assigned to eval by hash (eval_fraction)
    signatures: Optional[np.ndarray]  # uint64 (candidates, num_perm), or None
    ids: np.ndarray  # token ids of all candidates, each document ending with the separator
    offsets: np.ndarray  # int64 (candidates + 1): document i is ids[offsets[i]:offsets[i+1]]


class ChunkProcessor:
    """Holds a worker's tokenizer and MinHasher; `process` is a pure function of the chunk."""

    def __init__(self, settings: WorkerSettings) -> None:
        from pipeline import dedup

        self.settings = settings
        self._dedup = dedup
        self.encoder = DocumentEncoder(
            settings.backend_json,
            separator_id=settings.separator_id,
            control_ids=settings.control_ids,
            dtype=settings.token_dtype,
        )
        self.minhasher = dedup.MinHasher(**settings.minhash) if settings.minhash is not None else None

    def process(self, sources: Sequence[int], payloads: Sequence[Payload]) -> ChunkResult:
        s = self.settings
        reasons = np.zeros(len(payloads), dtype=np.int8)
        texts: list[str] = []
        for i, (source_index, payload) in enumerate(zip(sources, payloads)):
            text, reason = decode_record(payload, s.formats[source_index], s.text_field)
            if reason is None:
                reason = filter_text(text, min_length=s.min_length)
            if reason is not None:
                reasons[i] = REASON_CODES[reason]
            else:
                texts.append(text)
        signatures = None
        if self.minhasher is not None:
            keys, signatures = self.minhasher.keys_and_signatures(texts)  # normalizes each text once
        else:
            keys = self._dedup.exact_keys(texts)
        keys = np.asarray(keys, dtype=np.uint64)
        if s.eval_fraction > 0:
            # Seeded hash of the normalized text (via its exact key): stable, order-independent, and
            # exact duplicates always land in the same split.
            limit = int(s.eval_fraction * 2**64)
            is_eval = np.fromiter((xxhash.xxh64_intdigest(int(k).to_bytes(8, "little"), seed=s.split_seed) < limit for k in keys), dtype=bool, count=len(texts))
        else:
            is_eval = np.zeros(len(texts), dtype=bool)
        ids, offsets = self.encoder.encode(texts)
        return ChunkResult(
            reasons=reasons,
            keys=keys,
            is_eval=is_eval,
            signatures=signatures,
            ids=ids,
            offsets=offsets,
        )


_PROCESSOR: Optional[ChunkProcessor] = None


def init_worker(settings: WorkerSettings) -> None:
    """Pool initializer: one single-threaded tokenizer per process; Ctrl-C is the parent's job."""
    global _PROCESSOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["RAYON_NUM_THREADS"] = "1"  # one process per core; no nested tokenizer threads
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _PROCESSOR = ChunkProcessor(settings)


def process_chunk(sources: Sequence[int], payloads: Sequence[Payload]) -> ChunkResult:
    """Pool task: process one chunk with the worker's ChunkProcessor."""
    assert _PROCESSOR is not None, "init_worker was not called"
    return _PROCESSOR.process(sources, payloads)
