"""The per-record work of `cpt-prep build`, done on chunks of records in worker processes.

A chunk is a run of consecutive records (~`CHUNK_BYTES` of payload). Each chunk makes two passes:
1. `scan_chunk`: decode, filter, and hash each record (exact key, MinHash band hashes,
   eval-assignment hash), and write the results into the staging folder (`write_scan`: filter
   reasons and eval flags, plus the sorted hash files of `pipeline.dedup.collisions`). Nothing
   here depends on other documents; the task returns only counts.
2. Once every chunk is scanned and the colliding hashes are merged, the main process decides the
   order-dependent outcomes (duplicates, max samples) serially in input order
   (`pipeline.build.outcomes`), then sends out only the records it keeps: `encode_chunk`
   tokenizes them.
Duplicates are therefore never tokenized, and the output is byte-identical whatever the number of
workers, the executor or the chunk size.

Cost per MB of text (Qwen2, one core of the 2-core machine): tokenization ~0.65-0.7 s, the scan
~0.1 s (almost all MinHash), decoding twice ~2 ms. A scan result holds 8 bytes x num_perm per
document (~0.9 KB at 112 permutations) until it is written (~180 bytes per document on disk); an
encoded chunk 4 bytes per token.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import xxhash

from pipeline.dedup.collisions import load_array, save_array, write_sorted_hashes
from pipeline.dedup.lsh import band_hashes
from pipeline.filters import filter_text
from pipeline.normalize import exact_keys
from pipeline.read import Payload, decode_record
from pipeline.tokenize.backend import build_encoder
from pipeline.tokenize.certificate import read_certificate
from pipeline.tokenize.fast import read_token_table
from schemas.manifest import DROP_REASONS

CHUNK_BYTES = 2 * 2**20  # ~2 MiB of text per chunk: ~0.2 s of scanning, ~1.4 s of tokenizing
REASON_CODES = {reason: code for code, reason in enumerate(DROP_REASONS, start=1)}  # 0 = candidate


@dataclass(frozen=True)
class ScanSettings:
    """What a worker needs for both passes (pickled once per worker at start; no tokenizer, so the
    pool starts scanning while the main process is still loading the tokenizer)."""

    formats: tuple[str, ...]  # per source_index: txt | jsonl | parquet
    text_field: str
    min_length: int
    minhash: Optional[dict[str, Any]]  # MinHasher kwargs, None when no near-duplicate detection runs
    num_bands: int  # LSH bands of the signature (rows per band = num_perm / num_bands)
    eval_fraction: float  # > 0 only when eval documents are assigned by hash
    split_seed: int


@dataclass(frozen=True)
class EncodeSettings:
    """The tokenizer side of pass 2, sent with each encode task (small: the tokenizer is a file)."""

    backend_path: str  # pipeline.tokenize.load.plain_text_backend_json, written once by the main process
    separator_id: int
    control_ids: tuple[int, ...] = field(repr=False)
    token_dtype: str
    certificate_path: Optional[str] = None  # the fast backend's certificate (JSON), None for HF tokenizers
    token_table_path: Optional[str] = None  # the fast backend's token table (pipeline.tokenize.fast.token_table)


@dataclass
class ScanResult:
    """Per-record facts of one chunk; arrays over candidates follow record order."""

    reasons: np.ndarray  # int8 per record: 0 = candidate, else REASON_CODES[reason]
    keys: np.ndarray  # uint64 per candidate: pipeline.normalize.exact_key
    is_eval: np.ndarray  # bool per candidate: assigned to eval by hash (eval_fraction)
    signatures: Optional[np.ndarray]  # uint64 (candidates, num_perm), or None


@dataclass
class ScanRecord:
    """What the decisions read back of one chunk's scan (the hashes are in `Collisions`)."""

    reasons: np.ndarray
    is_eval: np.ndarray


@dataclass
class Encoded:
    """Token ids of the kept records of one chunk, in record order."""

    ids: np.ndarray  # each document ends with the separator
    offsets: np.ndarray  # int64 (documents + 1): document i is ids[offsets[i]:offsets[i+1]]
    num_reference: int = 0  # documents the fast backend left to HF tokenizers


class ChunkWorker:
    """One worker's state (MinHasher, encoders); `scan` and `encode` are pure functions of a chunk."""

    def __init__(self, settings: ScanSettings) -> None:
        from pipeline.dedup.minhash import MinHasher

        self.settings = settings
        self.minhasher = MinHasher(**settings.minhash) if settings.minhash is not None else None
        self._encoders: dict[EncodeSettings, Any] = {}

    def scan(self, sources: Sequence[int], payloads: Sequence[Payload]) -> ScanResult:
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
            keys = exact_keys(texts)
        keys = np.asarray(keys, dtype=np.uint64)
        if s.eval_fraction > 0:
            # Seeded hash of the normalized text (via its exact key): stable, order-independent, and
            # exact duplicates always land in the same split.
            limit = int(s.eval_fraction * 2**64)
            is_eval = np.fromiter((xxhash.xxh64_intdigest(int(k).to_bytes(8, "little"), seed=s.split_seed) < limit for k in keys), dtype=bool, count=len(texts))
        else:
            is_eval = np.zeros(len(texts), dtype=bool)
        return ScanResult(reasons=reasons, keys=keys, is_eval=is_eval, signatures=signatures)

    def write_scan(self, folder: Path, chunk_index: int, result: ScanResult) -> None:
        """Filter reasons and eval flags, plus the sorted exact-key and band-hash files."""
        save_array(scan_file(folder, chunk_index, "reasons"), result.reasons)
        save_array(scan_file(folder, chunk_index, "is_eval"), result.is_eval)
        write_sorted_hashes(folder, chunk_index, "exact", result.keys)
        if result.signatures is not None:
            num_bands = self.settings.num_bands
            rows = result.signatures.shape[1] // num_bands
            write_sorted_hashes(folder, chunk_index, "bands", band_hashes(result.signatures, num_bands=num_bands, rows_per_band=rows))

    def encode(self, settings: EncodeSettings, sources: Sequence[int], payloads: Sequence[Payload]) -> Encoded:
        """Tokenize records that `scan` found valid (decoding them again is ~2 ms per MB)."""
        encoder = self._encoders.get(settings)
        if encoder is None:
            certificate = read_certificate(Path(settings.certificate_path)) if settings.certificate_path else None
            tokens = None
            if certificate is not None and settings.token_table_path:
                tokens = read_token_table(Path(settings.token_table_path), certificate.key, certificate.num_tokens)
                if tokens is None:
                    raise ValueError(f"{settings.token_table_path}: not the token table of this build's tokenizer")
            encoder = build_encoder(Path(settings.backend_path), certificate, separator_id=settings.separator_id, control_ids=settings.control_ids,
                                    dtype=settings.token_dtype, tokens=tokens)
            self._encoders = {settings: encoder}
        s = self.settings
        texts = [decode_record(payload, s.formats[source_index], s.text_field)[0] for source_index, payload in zip(sources, payloads)]
        before = getattr(encoder, "num_reference_documents", 0)
        ids, offsets = encoder.encode(texts)
        return Encoded(ids=ids, offsets=offsets, num_reference=getattr(encoder, "num_reference_documents", 0) - before)


_WORKER: Optional[ChunkWorker] = None


def init_worker(settings: ScanSettings, *, in_pool: Optional[bool] = None) -> None:
    """Set up this process's ChunkWorker. In a pool process (the default when this process is a
    multiprocessing child): one single-threaded tokenizer per process, and Ctrl-C is the parent's
    job. In the main process (`--workers 1`) or a Ray worker: the tokenizer keeps its own threads
    (Ray's workers get RAYON_NUM_THREADS=1 from `pipeline.executor.ray`), SIGINT as it is."""
    global _WORKER
    if in_pool is None:
        in_pool = multiprocessing.parent_process() is not None
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.environ["RAYON_NUM_THREADS"] = "1"  # one process per core; no nested tokenizer threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = ChunkWorker(settings)


def scan_chunk(chunk_index: int, sources: Sequence[int], payloads: Sequence[Payload], folder: str) -> int:
    """Pass 1 task: decode, filter and hash one chunk, write the results into `folder`; returns
    the number of candidates (records that passed the filters)."""
    assert _WORKER is not None, "init_worker was not called"
    result = _WORKER.scan(sources, payloads)
    _WORKER.write_scan(Path(folder), chunk_index, result)
    return int(result.keys.size)


def scan_file(folder: Path, chunk_index: int, what: str) -> Path:
    return Path(folder) / f"{chunk_index:08d}.scan.{what}.npy"


def read_scan(folder: Path, chunk_index: int, num_records: int) -> ScanRecord:
    """One chunk's scan as written by `scan_chunk`, checked against the chunk read again."""
    reasons = load_array(scan_file(folder, chunk_index, "reasons"), np.dtype(np.int8))
    is_eval = load_array(scan_file(folder, chunk_index, "is_eval"), np.dtype(bool))
    if reasons.size != num_records or is_eval.size != int((reasons == 0).sum()):
        raise ValueError(f"chunk {chunk_index}: the scan has {reasons.size} records and {is_eval.size} eval flags; {num_records} records were read")
    return ScanRecord(reasons=reasons, is_eval=is_eval)


def encode_chunk(settings: EncodeSettings, sources: Sequence[int], payloads: Sequence[Payload]) -> Encoded:
    """Pass 2 task: tokenize the kept records of one chunk."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.encode(settings, sources, payloads)
