"""Vectorised inspection of token rows: the per-row structural rules over the flat `values` buffer
and the `offsets` of an Arrow list column, never as Python lists.

- Each group of consecutive record batches (up to `GROUP_TOKENS` = 4M tokens) is checked with one
  comparison pass over its ids plus per-document work: separator at the end, control tokens
  inside, ids >= the vocabulary, content lengths. A group of one batch is zero-copy.
- Row numbers in findings are relative to the group; `iter_groups` gives each group's first row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

GROUP_TOKENS = 1 << 22  # tokens per vectorised group: ~16-64 MB of temporaries, amortises numpy call overhead


@dataclass
class DocumentFindings:
    """What `inspect_documents` found in a group of rows (row numbers relative to the group)."""

    content_lengths: np.ndarray  # tokens per row without a trailing separator
    missing_separator: np.ndarray  # rows whose last id is not the separator (or that are empty)
    control_inside: np.ndarray  # rows with a control token anywhere but the final separator position
    control_ids: np.ndarray  # the first offending control id of each row in control_inside
    over_vocab: np.ndarray  # rows holding an id >= vocab_size
    max_id: int  # the largest id among those >= the lowest control id (so it includes any id >= vocab_size); -1 if none


def provenance_key(source_index: np.ndarray, line: np.ndarray) -> np.ndarray:
    """One uint64 per (input, line): the input index in the top 24 bits, the line in the low 40."""
    return (source_index.astype(np.uint64) << np.uint64(40)) | (line.astype(np.uint64) & np.uint64((1 << 40) - 1))


def rows_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Row of each flat value position (empty rows never own a position)."""
    return np.searchsorted(offsets, positions, side="right") - 1


def inspect_documents(offsets: np.ndarray, values: np.ndarray, *, separator_id: int, vocab_size: int,
                      control_lut: np.ndarray) -> DocumentFindings:
    """Check rows `values[offsets[i]:offsets[i+1]]`. `control_lut[id]` is True for control ids
    (length vocab_size + 1; ids >= vocab_size are looked up at index vocab_size).

    One pass over the tokens: one comparison (ids >= the lowest control id: every control token and
    every id beyond the vocabulary, a few per document, then examined one by one); everything else
    is per document."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    lo, hi = int(offsets[0]), int(offsets[-1])
    vals = values[lo:hi]
    rel = offsets - lo
    starts, ends = rel[:-1], rel[1:]
    lengths = ends - starts
    nonempty = lengths > 0
    last = np.full(n, -1, dtype=np.int64)
    last[nonempty] = vals[ends[nonempty] - 1]
    has_sep = last == separator_id
    content_end = ends - has_sep
    content_lengths = content_end - starts

    lowest = min(int(np.argmax(control_lut)) if control_lut[:vocab_size].any() else vocab_size, vocab_size)
    if lowest > np.iinfo(vals.dtype).max:
        cand = np.zeros(0, dtype=np.int64)
    else:
        cand = np.flatnonzero(vals >= vals.dtype.type(lowest))
    cand_ids = vals[cand].astype(np.int64)
    over = cand[cand_ids >= vocab_size]
    is_ctrl = control_lut[np.minimum(cand_ids, vocab_size)]
    final = ends[has_sep] - 1  # sorted positions of the separators that end their documents
    if len(final) and len(cand):
        at = np.minimum(np.searchsorted(final, cand), len(final) - 1)
        is_ctrl &= final[at] != cand
    ctrl_pos = cand[is_ctrl]
    ctrl_rows, first = np.unique(rows_of(rel, ctrl_pos), return_index=True)
    return DocumentFindings(
        content_lengths=content_lengths,
        missing_separator=np.flatnonzero(~has_sep),
        control_inside=ctrl_rows,
        control_ids=vals[ctrl_pos[first]].astype(np.int64) if len(ctrl_pos) else np.zeros(0, dtype=np.int64),
        over_vocab=np.unique(rows_of(rel, over)),
        max_id=int(cand_ids.max(initial=-1)),
    )


def _group_arrays(batches: list[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offsets from 0, values, source_index, line) of consecutive batches, joined."""
    offs, vals, srcs, lines = [], [], [], []
    base = 0
    for b in batches:
        col = b.column(0)
        o = col.offsets.to_numpy().astype(np.int64)
        vals.append(col.values.to_numpy(zero_copy_only=False)[o[0]:o[-1]])
        offs.append(o[:-1] - o[0] + base)
        base += int(o[-1] - o[0])
        srcs.append(b.column(1).to_numpy(zero_copy_only=False))
        lines.append(b.column(2).to_numpy(zero_copy_only=False))
    offs.append(np.array([base], dtype=np.int64))
    if len(batches) == 1:
        return np.concatenate(offs), vals[0], srcs[0], lines[0]
    return np.concatenate(offs), np.concatenate(vals), np.concatenate(srcs), np.concatenate(lines)


def iter_groups(table: pa.Table) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, offsets, values, source_index, line) per group of consecutive record batches
    holding about GROUP_TOKENS tokens; a group of one batch is zero-copy."""
    pending: list[pa.RecordBatch] = []
    pending_tokens = 0
    row = 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        offsets = batch.column(0).offsets
        pending_tokens += offsets[-1].as_py() - offsets[0].as_py()
        if pending_tokens >= GROUP_TOKENS:
            yield (row, *_group_arrays(pending))
            row += sum(b.num_rows for b in pending)
            pending, pending_tokens = [], 0
    if pending:
        yield (row, *_group_arrays(pending))


