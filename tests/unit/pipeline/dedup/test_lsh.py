"""Unit tests of the LSH index (pipeline.dedup.lsh): first occurrence kept, batched lookups equal
serial ones (chains included), memory per document, and the bounded power table."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dedup.lsh import NearDuplicateIndex
from pipeline.dedup.minhash import (
    jaccard,
)
from tests.unit.pipeline.dedup.sample_text import (
    NUM_PERM,
    SAMPLE,
    default_hasher,
    sample_documents,
    shingles_of,
)


# ------------------------------------------------------------------------------------ the index
def test_first_occurrence_is_kept():
    english, _ = sample_documents()
    a, b = english[0], english[1]
    words = a.split(" ")
    words[len(words) // 2] = "zebra"
    near = " ".join(words)  # one word changed in a long document: Jaccard ~0.9
    assert jaccard(shingles_of(a), shingles_of(near)) > 0.85
    sigs = default_hasher().signatures([a, a.upper(), b, near, a])
    index = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    assert [index.add_if_new(k, s) for k, s in zip([10, 11, 12, 13, 14], sigs)] == [None, 10, None, 10, 10]
    assert len(index) == 2 and index.query(sigs[3]) == 10


def test_batch_equals_serial_including_chains():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2**61, NUM_PERM, dtype=np.uint64)
    y = rng.integers(0, 2**61, NUM_PERM, dtype=np.uint64)
    y[:8] = x[:8]  # y shares band 0 with x
    z = rng.integers(0, 2**61, NUM_PERM, dtype=np.uint64)
    z[80:88] = y[80:88]  # z shares band 10 with y only; y is dropped, so z is new
    w = z.copy()
    sigs = np.stack([x, y, z, w, rng.integers(0, 2**61, NUM_PERM, dtype=np.uint64)])
    expected = [None, 0, None, 2, None]
    serial = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    assert [serial.add_if_new(k, s) for k, s in enumerate(sigs)] == expected
    batch = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    assert batch.add_if_new_batch(range(5), sigs) == expected
    # Later queries see the same state either way; inserted (not matched) documents are indexed.
    assert serial.query(w) == batch.query(w) == 2 and batch.query(y) == 0


def test_index_on_the_sample_batch_equals_serial():
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    sigs = np.array(default_hasher().signatures(lines))
    serial = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    expected = [serial.add_if_new(k, s) for k, s in enumerate(sigs)]
    batch = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    got = []
    for lo in range(0, len(lines), 500):
        got += batch.add_if_new_batch(range(lo, min(lo + 500, len(lines))), sigs[lo : lo + 500])
    assert got == expected
    assert sum(m is not None for m in expected) >= 150  # the sample's 65 exact + 85 near duplicates (+ blanks)


def test_index_memory_per_document():
    rng = np.random.default_rng(1)
    index = NearDuplicateIndex(num_bands=14, rows_per_band=8)
    for lo in range(0, 40_000, 4000):
        index.add_if_new_batch(range(lo, lo + 4000), rng.integers(0, 2**61, (4000, NUM_PERM), dtype=np.uint64))
    per_doc = index.nbytes / len(index)
    print(f"index: {per_doc:.0f} bytes per document at 40,000 documents")
    assert len(index) == 40_000
    assert 14 * 12 / 0.6 + 8 <= per_doc <= 14 * 12 / 0.3 + 8


def test_power_table_values_and_bounded_cache():
    from pipeline.dedup.lsh import PowerTable

    base = 0x9E3779B97F4A7C17
    table = PowerTable(base, max_kept=1 << 16)
    p, q = table(1000)
    for k in (0, 1, 2, 999, 65535):
        assert int(p[k]) == pow(base, k, 1 << 64)
        assert int(p[k]) * int(q[k]) % (1 << 64) == 1
    big_p, _ = table((1 << 16) + 1)  # beyond max_kept: computed and returned, not kept
    assert len(big_p) == 1 << 17 and int(big_p[70000]) == pow(base, 70000, 1 << 64)
    assert len(table(10)[0]) == 1 << 16
    with pytest.raises(ValueError, match="odd base"):
        PowerTable(2)

