"""Arrow token-shard writing (the layout is fixed by `schemas.manifest`).

A split's documents go, in order, into `{split}/{split}-{NNNNN}.arrow`; a new shard starts once the
current one holds `target_bytes` of token data. Record batches hold `ROWS_PER_BATCH` rows, so the
bytes depend only on the documents and their order (never on worker count or timing).
A shard is fsynced before its size and sha256 are taken; nothing is listed until `close()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from schemas.manifest import ShardInfo, sha256_file, shard_schema

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
