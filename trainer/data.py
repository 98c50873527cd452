"""Packed, memory-mapped windows of a split, and the eval loader.

The documents of a split (manifest shard order; each ends with the separator token) form one token
stream, cut into windows of `max_length` tokens. Invariants:
- Zero copy: the stream is the memory-mapped Arrow shards' flat `input_ids` values; document starts
  are their list offsets. Resident memory is one int64 per document plus one window per batch row
  (a 10 B-token split of 1,000-token documents: 10 M starts = 80 MB). Batches are built in
  the training process at ~40 M tokens/s at max_length 2048 (bench/bench_loader.py): no workers.
- `position_ids` restart at 0 at every document start inside a window and at the window start.
  transformers (5.x) derives a block-causal mask from them (sdpa/eager; varlen kernels for
  flash_attention_2), so no token attends across documents; the model must be called without an
  attention mask and with `use_cache=False` (see trainer/modeling.py).
- `labels` equal `input_ids` except -100 at each position where `position_ids` is 0 (a document's
  first token: the token before it, the previous document's separator, cannot see this document,
  so it is not trained to guess it; this also makes a packed window's loss the exact sum of its
  documents' losses alone) and on padding.
- Train: `num_tokens // max_length` windows, the last partial window dropped (logged). Eval:
  `ceil(num_tokens / max_length)` windows, the last one padded with the separator id,
  `position_ids` restarting at 0 and labels -100 on the padding.
- Eval (`WindowLoader`): window order, each window on exactly one rank, ranks padded with empty
  windows (all labels -100) to equal length. Training order (seeded, per source, per pass), the
  mixture of sources and the resume position are trainer/mixture.py's.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from schemas.errors import DataError
from schemas.manifest import Manifest, open_shard, resolve_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that are not trained (torch cross_entropy's ignore_index)
EMPTY_WINDOW = -1  # window index of an eval padding window: separator ids, every label IGNORE_INDEX


class PackedWindows:
    """A split's documents as one stream, read in windows of `max_length` tokens."""

    def __init__(self, manifest: Manifest, folder: str | Path, split: str, *, max_length: int, label: str = "") -> None:
        if max_length < 2:
            raise DataError(f"max_length={max_length} is too small: a window needs at least 2 tokens; set model.max_length >= 2")
        info = manifest.splits.get(split)
        self.split = split
        self.max_length = int(max_length)
        self.pad_id = int(manifest.tokenizer.separator_id)
        self.vocab_size = int(manifest.tokenizer.vocab_size)
        self._tables: list[pa.Table] = []  # keeps the memory maps alive
        self._chunks: list[np.ndarray] = []  # flat token values of each Arrow chunk (zero-copy views)
        chunk_starts = [0]
        doc_starts: list[np.ndarray] = []
        value_type = pa.from_numpy_dtype(np.dtype(manifest.token_dtype))
        for shard in info.shards if info is not None else []:
            table = open_shard(resolve_path(folder, shard.path))
            if "input_ids" not in table.column_names or table.schema.field("input_ids").type != pa.list_(value_type):
                raise DataError(f"shard {shard.path} has no input_ids column of list<{manifest.token_dtype}>; rebuild the shards with `cpt-prep build`")
            self._tables.append(table)
            for chunk in table.column("input_ids").chunks:
                if len(chunk) == 0:
                    continue
                offsets = chunk.offsets.to_numpy(zero_copy_only=True)
                lo, hi = int(offsets[0]), int(offsets[-1])
                values = chunk.values.to_numpy(zero_copy_only=True)[lo:hi]
                doc_starts.append(offsets[:-1].astype(np.int64) + (chunk_starts[-1] - lo))
                self._chunks.append(values)
                chunk_starts.append(chunk_starts[-1] + (hi - lo))
        self.num_tokens = int(chunk_starts[-1])
        self.num_documents = int(sum(len(d) for d in doc_starts))
        if info is not None and self.num_tokens != info.num_tokens:
            raise DataError(f"{split} shards hold {self.num_tokens} tokens, the manifest records {info.num_tokens}; rebuild the shards with `cpt-prep build`")
        self._chunk_starts = np.asarray(chunk_starts, dtype=np.int64)
        self._doc_starts = np.concatenate(doc_starts) if doc_starts else np.zeros(0, dtype=np.int64)

        of = f" of {label}" if label else ""
        if self.num_tokens == 0:
            fix = "add training documents" if split == "train" else "pass `--eval FILE` or `--eval_fraction F` to `cpt-prep build`"
            raise DataError(f"the {split} split{of} holds no tokens; {fix}")
        if split == "train":
            if self.num_tokens < self.max_length:
                raise DataError(
                    f"the train split{of} holds {self.num_tokens} tokens, fewer than one window of max_length={self.max_length}; "
                    f"lower model.max_length (e.g. --max_length {max(2, 2 ** int(math.log2(self.num_tokens)))}) or add data"
                )
            self.num_windows = self.num_tokens // self.max_length
            dropped = self.num_tokens - self.num_windows * self.max_length
            logger.info(
                "%strain: %d tokens in %d documents -> %d windows of %d tokens; the last %d tokens (a partial window) are not used",
                f"{label} " if label else "", self.num_tokens, self.num_documents, self.num_windows, self.max_length, dropped,
            )
        else:
            self.num_windows = -(-self.num_tokens // self.max_length)
            padding = self.num_windows * self.max_length - self.num_tokens
            logger.info(
                "%s%s: %d tokens in %d documents -> %d windows of %d tokens (the last padded with %d tokens that are not scored)",
                f"{label} " if label else "", split, self.num_tokens, self.num_documents, self.num_windows, self.max_length, padding,
            )

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Window `i` as int64 arrays `input_ids`, `position_ids`, `labels` of length max_length."""
        if not -self.num_windows <= i < self.num_windows:
            raise IndexError(f"window {i} out of range: the {self.split} split has {self.num_windows} windows")
        out = {name: np.empty(self.max_length, dtype=np.int64) for name in ("input_ids", "position_ids", "labels")}
        self.fill_window(i % self.num_windows, out["input_ids"], out["position_ids"], out["labels"])
        return out

    def fill_window(self, i: int, input_ids: np.ndarray, position_ids: np.ndarray, labels: np.ndarray) -> None:
        """Write window `i` (or `EMPTY_WINDOW`) into three preallocated int64 rows of max_length."""
        length = self.max_length
        start = i * length if i >= 0 else self.num_tokens
        stop = min(start + length, self.num_tokens)
        n = stop - start
        self._copy_tokens(start, stop, input_ids[:n])
        if n and int(input_ids[:n].max()) >= self.vocab_size:
            bad = int(input_ids[:n].max())
            raise DataError(
                f"{self.split} window {i} (stream tokens {start}..{stop}) holds id {bad} >= the tokenizer's {self.vocab_size} tokens; "
                "the shards are corrupt: run `cpt-prep check` and rebuild them"
            )
        # position_ids: 0 at the window start and at every document start inside the window.
        segment_start = np.zeros(length, dtype=np.int64)
        lo = np.searchsorted(self._doc_starts, start, side="right")
        hi = np.searchsorted(self._doc_starts, stop, side="left")
        inside = self._doc_starts[lo:hi] - start
        segment_start[inside] = inside
        if n < length:  # padding is a segment of its own, after every real token
            segment_start[n] = n
            input_ids[n:] = self.pad_id
        np.maximum.accumulate(segment_start, out=segment_start)
        np.subtract(np.arange(length, dtype=np.int64), segment_start, out=position_ids)
        np.copyto(labels, input_ids)
        labels[position_ids == 0] = IGNORE_INDEX
        labels[n:] = IGNORE_INDEX

    def _copy_tokens(self, start: int, stop: int, out: np.ndarray) -> None:
        pos = start
        c = int(np.searchsorted(self._chunk_starts, start, side="right")) - 1
        while pos < stop:
            chunk_start = int(self._chunk_starts[c])
            take = min(stop, int(self._chunk_starts[c + 1])) - pos
            out[pos - start : pos - start + take] = self._chunks[c][pos - chunk_start : pos - chunk_start + take]
            pos += take
            c += 1

    def token_stream(self) -> np.ndarray:
        """The whole split as one int64 array (a copy: for tests and small splits only)."""
        return np.concatenate([c.astype(np.int64) for c in self._chunks]) if self._chunks else np.zeros(0, np.int64)

    def document_starts(self) -> np.ndarray:
        """Stream offset of every document's first token (int64, ascending)."""
        return self._doc_starts


def collate_windows(rows: Sequence[tuple[PackedWindows, int]], max_length: int) -> dict[str, torch.Tensor]:
    """Stack windows, each `(windows, index)` and possibly of different sources, into int64 tensors
    [len(rows), max_length] (CPU; the caller moves them)."""
    shape = (len(rows), max_length)
    arrays = {name: np.empty(shape, dtype=np.int64) for name in ("input_ids", "position_ids", "labels")}
    for row, (windows, i) in enumerate(rows):
        windows.fill_window(int(i), arrays["input_ids"][row], arrays["position_ids"][row], arrays["labels"][row])
    return {name: torch.from_numpy(a) for name, a in arrays.items()}


class WindowLoader:
    """One pass over a split's windows in order, this process's share in batches (evaluation).

    Rank r of w takes windows r, r + w, r + 2w, ...; ranks that run out first get empty windows
    (`EMPTY_WINDOW`: every label -100) so that every rank runs the same number of batches. Each
    iteration is a whole new pass. Training order and resume live in trainer/mixture.py."""

    def __init__(self, windows: PackedWindows, *, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} is invalid; use an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} of world_size {world_size} is invalid; launch with `accelerate launch`")
        self.windows = windows
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.windows_per_rank = -(-windows.num_windows // world_size)

    def __len__(self) -> int:
        """Batches per pass on this rank (the last one may hold fewer windows)."""
        return -(-self.windows_per_rank // self.batch_size)

    def rank_indices(self) -> np.ndarray:
        """This rank's window indices, in order (EMPTY_WINDOW for padding)."""
        order = np.arange(self.windows_per_rank * self.world_size, dtype=np.int64)
        order[order >= self.windows.num_windows] = EMPTY_WINDOW
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.rank_indices()
        for k in range(len(self)):
            rows = [(self.windows, int(i)) for i in order[k * self.batch_size : (k + 1) * self.batch_size]]
            yield collate_windows(rows, self.windows.max_length)
