"""Unit tests of the vectorised row inspection shared by `cpt-prep check` and `cpt-train`
(schemas.verify.rows): separator, control tokens, ids beyond the vocabulary, lengths, and grouping
of record batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.verify import rows as verify_rows
from schemas.verify.rows import inspect_documents, iter_groups

SEP, VOCAB = 9, 12
LUT = np.zeros(VOCAB + 1, dtype=bool)
LUT[[9, 10]] = True  # 9 = separator, 10 = another control token


def _inspect(rows: list[list[int]], dtype=np.uint32):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([i for r in rows for i in r], dtype=dtype)
    return inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)


def test_inspect_finds_each_structural_problem_by_row():
    d = _inspect([[1, 2, SEP], [3, 4], [], [5, SEP, 6, SEP], [7, 10, SEP], [8, 12, SEP], [SEP]])
    assert d.missing_separator.tolist() == [1, 2]
    assert d.control_inside.tolist() == [3, 4] and d.control_ids.tolist() == [SEP, 10]
    assert d.over_vocab.tolist() == [5] and d.max_id == 12
    assert d.content_lengths.tolist() == [2, 2, 0, 3, 2, 2, 0]


def test_inspect_ids_of_a_narrow_dtype_never_reach_a_wide_vocab():
    offsets = np.array([0, 3], dtype=np.int64)
    lut = np.zeros(70_001, dtype=bool)
    lut[69_999] = True
    d = inspect_documents(offsets, np.array([1, 65535, 7], dtype=np.uint16), separator_id=7, vocab_size=70_000, control_lut=lut)
    assert len(d.over_vocab) == 0 and len(d.missing_separator) == 0 and len(d.control_inside) == 0


def test_inspect_finds_an_id_of_four_billion():
    d = _inspect([[1, SEP], [2, 4_000_000_000, SEP]])
    assert d.over_vocab.tolist() == [1] and d.max_id == 4_000_000_000


def test_groups_of_batches_give_the_same_findings_as_one_group(monkeypatch):
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(0, VOCAB + 2, size=rng.integers(0, 9))) for _ in range(300)]
    ids_type = pa.list_(pa.uint32())
    batches = [pa.record_batch([pa.array(rows[i:i + 37], ids_type), pa.array(np.zeros(len(rows[i:i + 37]), np.uint32)),
                                pa.array(np.arange(i, i + len(rows[i:i + 37]), dtype=np.uint64) + 1)], names=["input_ids", "source_index", "line"])
               for i in range(0, 300, 37)]
    table = pa.Table.from_batches(batches)

    def collect():
        out = {"missing": [], "ctrl": [], "over": [], "lengths": [], "lines": []}
        for row0, offsets, values, _, lines in iter_groups(table):
            d = inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)
            out["missing"] += (d.missing_separator + row0).tolist()
            out["ctrl"] += (d.control_inside + row0).tolist()
            out["over"] += (d.over_vocab + row0).tolist()
            out["lengths"] += d.content_lengths.tolist()
            out["lines"] += lines.tolist()
        return out

    monkeypatch.setattr(verify_rows, "GROUP_TOKENS", 1)  # one batch per group
    small = collect()
    monkeypatch.setattr(verify_rows, "GROUP_TOKENS", 10**9)  # every batch in one group
    big = collect()
    assert small == big and big["lines"] == list(range(1, 301))
    expected = _inspect(rows)
    assert big["missing"] == expected.missing_separator.tolist() and big["lengths"] == expected.content_lengths.tolist()
