"""Unit tests of `cpt-prep check`'s per-document hashes (pipeline.check.shards), computed on the
groups of the shared structural scan (schemas.verify.rows)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.check.shards import document_hashes
from schemas.verify import rows as verify_rows
from schemas.verify.rows import inspect_documents, iter_groups

SEP, VOCAB = 9, 12
LUT = np.zeros(VOCAB + 1, dtype=bool)
LUT[[9, 10]] = True


def _hashes(rows: list[list[int]], dtype=np.uint32) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([i for r in rows for i in r], dtype=dtype)
    d = inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)
    return document_hashes(offsets, values, d.content_lengths)


def test_document_hash_depends_on_content_not_position_or_separator():
    h = _hashes([[1, 2, 3, SEP], [4, SEP], [1, 2, 3, SEP], [1, 2, 3], [3, 2, 1, SEP], [0, 1, 2, 3, SEP], [SEP], []]).tolist()
    assert h[0] == h[2] == h[3]  # same ids, with or without the trailing separator
    assert len({h[0], h[1], h[4], h[5], h[6]}) == 5  # order and a leading 0 matter
    assert h[6] == h[7]  # both empty


def test_document_hashes_have_no_collisions_on_many_random_documents():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 5, size=rng.integers(1, 12))) + [SEP] for _ in range(20_000)]
    distinct = {tuple(r) for r in rows}
    assert len(np.unique(_hashes(rows))) == len(distinct)


def test_hashes_per_group_equal_hashes_over_one_group(monkeypatch):
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(0, VOCAB, size=rng.integers(0, 9))) + [SEP] for _ in range(300)]
    ids_type = pa.list_(pa.uint32())
    table = pa.Table.from_batches([pa.record_batch([pa.array(rows[i:i + 37], ids_type), pa.array(np.zeros(len(rows[i:i + 37]), np.uint32)),
                                                    pa.array(np.ones(len(rows[i:i + 37]), np.uint64))], names=["input_ids", "source_index", "line"])
                                   for i in range(0, 300, 37)])

    def collect():
        out = []
        for _, offsets, values, _, _ in iter_groups(table):
            d = inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)
            out += document_hashes(offsets, values, d.content_lengths).tolist()
        return out

    monkeypatch.setattr(verify_rows, "GROUP_TOKENS", 1)
    small = collect()
    monkeypatch.setattr(verify_rows, "GROUP_TOKENS", 10**9)
    assert small == collect() == _hashes(rows).tolist()
