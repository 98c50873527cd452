"""Arrow token-shard writing (the layout is fixed by `schemas.manifest`).

A split's documents go, in order, into `{split}/{split}-{NNNNN}.arrow`; a new shard starts once the
current one holds `target_bytes` of token data. Record batches hold `ROWS_PER_BATCH` rows, so the
bytes depend only on the documents and their order (never on worker count or timing).
A shard is fsynced before its size and sha256 are taken; nothing is listed until `close()`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from schemas import __version__
from schemas.config import DataConfig
from schemas.errors import DataError
from schemas.manifest import (
    SPLITS,
    Accounting,
    Manifest,
    ShardInfo,
    SplitInfo,
    TokenizerInfo,
    sha256_file,
    shard_schema,
    token_dtype_for_vocab,
    write_manifest,
)

ROWS_PER_BATCH = 1024  # rows per Arrow record batch: small enough to stream, large enough to be cheap


class ShardWriter:
    """Writes one split's documents into size-bounded Arrow stream shards."""

    def __init__(self, folder: str | Path, split: str, *, token_dtype: str, target_bytes: int) -> None:
        self.folder = Path(folder)
        self.split = split
        self.token_dtype = np.dtype(token_dtype)
        self.schema = shard_schema(token_dtype)
        self.target_bytes = target_bytes
        self.shards: list[ShardInfo] = []
        self._file = None
        self._writer = None
        self._rel = ""
        self._pending: list[tuple[np.ndarray, int, int]] = []
        self._shard_documents = 0
        self._shard_tokens = 0

    def write(self, input_ids: Sequence[int] | np.ndarray, source_index: int, line: int) -> None:
        """Append one document (its ids already end with the separator)."""
        ids = np.asarray(input_ids, dtype=self.token_dtype)
        if self._writer is None:
            self._open()
        self._pending.append((ids, source_index, line))
        self._shard_documents += 1
        self._shard_tokens += len(ids)
        if len(self._pending) >= ROWS_PER_BATCH:
            self._flush()
        if self._shard_tokens * self.token_dtype.itemsize >= self.target_bytes:
            self._finish_shard()

    def close(self) -> list[ShardInfo]:
        """Finish the last shard and return every shard's record."""
        if self._writer is not None:
            self._finish_shard()
        return self.shards

    def _open(self) -> None:
        self._rel = f"{self.split}/{self.split}-{len(self.shards):05d}.arrow"
        path = self.folder / self._rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._file, self.schema)
        self._shard_documents = 0
        self._shard_tokens = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        ids, sources, lines = zip(*self._pending)
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        values = np.concatenate(ids) if ids else np.zeros(0, dtype=self.token_dtype)
        column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type=self.schema.field("input_ids").type.value_type))
        batch = pa.record_batch(
            [column, pa.array(sources, pa.uint32()), pa.array(lines, pa.uint64())],
            schema=self.schema,
        )
        self._writer.write_batch(batch)
        self._pending = []

    def _finish_shard(self) -> None:
        self._flush()
        self._writer.close()
        self._file.close()
        path = self.folder / self._rel
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        self.shards.append(
            ShardInfo(
                path=self._rel,
                num_documents=self._shard_documents,
                num_tokens=self._shard_tokens,
                num_bytes=path.stat().st_size,
                sha256=sha256_file(path),
            )
        )
        self._writer = None
        self._file = None


def write_token_dataset(
    folder: str | Path,
    documents: Mapping[str, Iterable[Sequence[int]]],
    *,
    tokenizer: TokenizerInfo,
    target_bytes: int = 128 * 2**20,
    config: Optional[dict[str, Any]] = None,
    note: str = "already tokenized",
    check_ids: bool = True,
) -> Path:
    """Write already-tokenized documents (ids WITHOUT the separator, which is appended) as shards +
    manifest.json, and return the manifest's path: the contract without the text pipeline, for tests,
    benchmarks and data tokenized elsewhere. No inputs are recorded; a document's provenance is
    source_index 0 and its 1-based position in its split. `tokenizer` comes from
    `pipeline.tokenize.load.tokenizer_info`. An id outside the vocabulary is a DataError (`check_ids=False`
    lets tests write such a data set on purpose); the manifest is written last, so a refused data
    set never looks complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    splits = {}
    for split in SPLITS:
        writer = ShardWriter(folder, split, token_dtype=dtype, target_bytes=target_bytes)
        for line, doc in enumerate(documents.get(split, ()), start=1):
            doc = np.asarray(doc, dtype=np.int64)
            if check_ids and doc.size and (doc.min() < 0 or doc.max() >= tokenizer.vocab_size):
                raise DataError(f"{split} document {line} has token id {int(doc.max() if doc.max() >= tokenizer.vocab_size else doc.min())} "
                                f"outside the tokenizer's 0..{tokenizer.vocab_size - 1}; tokenize with the tokenizer passed as `tokenizer`")
            ids = np.empty(len(doc) + 1, dtype=dtype)
            ids[:-1] = doc
            ids[-1] = tokenizer.separator_id
            writer.write(ids, source_index=0, line=line)
        shards = writer.close()
        splits[split] = SplitInfo(
            num_documents=sum(s.num_documents for s in shards),
            num_tokens=sum(s.num_tokens for s in shards),
            shards=shards,
        )
    kept = {split: info.num_documents for split, info in splits.items()}
    manifest = Manifest(
        tool_version=__version__,
        created_at="1970-01-01T00:00:00Z",
        inputs=[],
        config={**dataclasses.asdict(DataConfig()), **(config or {})},
        dedup={"method": f"none ({note})"},
        tokenizer=tokenizer,
        token_dtype=dtype,
        splits=splits,
        accounting=Accounting(num_records=sum(kept.values()), kept=kept, dropped={}),
    )
    return write_manifest(manifest, folder)
