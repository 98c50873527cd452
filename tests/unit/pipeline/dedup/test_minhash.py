"""Unit tests of shingling and MinHash signatures (pipeline.dedup.minhash): word and CJK-character
n-grams, too-short documents, the permutation formula, determinism across processes, agreement with
datasketch, and near-duplicate recall and false positives against exact Jaccard."""

from __future__ import annotations

import math
import multiprocessing
import pickle
import random

import numpy as np
import pytest

from pipeline.dedup.lsh import NearDuplicateIndex, lsh_threshold
from pipeline.dedup.minhash import (
    MERSENNE,
    dedup_params,
    jaccard,
    reference_shingles,
    shingle_hashes,
)
from pipeline.normalize import normalize_for_hash
from schemas.config import DataConfig
from tests.unit.pipeline.dedup.sample_text import (
    NUM_PERM,
    SAMPLE,
    default_hasher,
    sample_documents,
    shingles_of,
)


def _signatures_in_child(payload: bytes) -> bytes:
    hasher, texts = pickle.loads(payload)
    return pickle.dumps(np.array(hasher.signatures(texts)))


# ------------------------------------------------------------------------------ near-dup quality
def _variants(rng: random.Random, units: list[str], vocab: list[str], rate: float) -> list[str]:
    units = list(units)
    for _ in range(max(1, round(rate * len(units)))):
        i, op = rng.randrange(len(units)), rng.random()
        if op < 0.5:
            units[i] = rng.choice(vocab)
        elif op < 0.75 and len(units) > 5:
            del units[i]
        else:
            units.insert(i, rng.choice(vocab))
    return units


# ------------------------------------------------------------------------------------ shingling
def test_english_word_ngrams():
    text = "The quick brown fox jumps over the lazy dog"
    assert len(shingles_of(text)) == 5  # 9 words -> 5 five-grams
    assert len(shingles_of(text, word_ngram=3)) == 7
    assert len(shingles_of(text + "!!!")) == 5  # punctuation does not make new shingles


def test_chinese_character_ngrams():
    text = "我今天很高兴去公园玩"  # 10 characters, no spaces
    assert len(shingles_of(text)) == 6
    assert len(shingles_of(text, char_ngram=2)) == 9
    assert np.array_equal(shingles_of("我今天很高兴，去公园玩！"), shingles_of(text))
    assert len(shingles_of("日本語のテキストです")) == 6 and len(shingles_of("한국어텍스트입니다")) == 5


def test_mixed_documents_get_both_kinds():
    text = "我今天很高兴去公园玩 and then we went home for dinner"  # 10 Han + 7 words
    assert len(shingles_of(text)) == 6 + 3
    # A short stream next to a full one adds one shingle of its whole content.
    assert len(shingles_of("iPhone 很好用电池也不错屏幕也大")) == 8 + 1  # 12 Han -> 8 five-grams


@pytest.mark.parametrize("text", ["", "hi", "Thanks a lot!", "好评", "ok 好", "  \t "])
def test_too_short_documents_have_exactly_one_shingle(text):
    assert len(shingles_of(text)) == 1
    assert default_hasher().signature(text).shape == (NUM_PERM,)


def test_too_short_documents_differ():
    keys = {shingles_of(t)[0] for t in ["hi", "hello", "好评", "差评", "ok 好", "ok 差", ""]}
    assert len(keys) == 7


def test_shingles_match_the_string_definition_on_the_sample():
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines[::3]):
        n_word, n_char = [(5, 5), (3, 2), (1, 1), (8, 12)][i % 4]
        normalized = normalize_for_hash(line)
        assert len(shingle_hashes(normalized, word_ngram=n_word, char_ngram=n_char)) == len(reference_shingles(normalized, word_ngram=n_word, char_ngram=n_char))


def test_hash_jaccard_equals_string_jaccard():
    english, chinese = sample_documents()
    rng = random.Random(3)
    for doc in english[:40] + chinese[:40]:
        units = doc.split(" ") if " " in doc else list(doc)
        for _ in range(len(units) // 10):
            units[rng.randrange(len(units))] = rng.choice(units)
        variant = (" " if " " in doc else "").join(units)
        a, b = normalize_for_hash(doc), normalize_for_hash(variant)
        sa, sb = reference_shingles(a), reference_shingles(b)
        expected = len(sa & sb) / len(sa | sb)
        assert jaccard(shingles_of(doc), shingles_of(variant)) == pytest.approx(expected, abs=1e-12)


# -------------------------------------------------------------------------------------- MinHash
def test_signature_is_the_minimum_of_the_permuted_shingles():
    hasher = default_hasher()
    lines = [line for line in SAMPLE.read_text(encoding="utf-8").split("\n")[::25]]
    batch = hasher.signatures(lines)
    for line, sig in zip(lines, batch):
        assert sig.dtype == np.uint64 and sig.shape == (NUM_PERM,)
        assert np.array_equal(sig, hasher.permute(shingles_of(line)).min(axis=0))
        assert np.array_equal(sig, hasher.signature(line))
        assert int(sig.max()) < 2**61 + 7


def test_permutation_is_a_times_h_plus_b_mod_mersenne():
    hasher = default_hasher()
    hashes = np.random.default_rng(0).integers(0, 2**64, 2000, dtype=np.uint64)
    got = hasher.permute(hashes)
    a, b, p = [int(x) for x in hasher.a[:5]], [int(x) for x in hasher.b[:5]], int(MERSENNE)
    for i, h in enumerate(hashes[:200].tolist()):
        assert [int(v) for v in got[i, :5]] == [((a[j] * h + b[j]) % 2**64) % p for j in range(5)]
    # The same permutation parameters as datasketch draws for seed 1.
    from datasketch import MinHash

    legacy = MinHash(num_perm=NUM_PERM, seed=1, scheme="legacy")
    assert np.array_equal(legacy.permutations[0], hasher.a) and np.array_equal(legacy.permutations[1], hasher.b)


def test_signatures_are_deterministic_across_processes():
    hasher = default_hasher()
    texts = SAMPLE.read_text(encoding="utf-8").split("\n")[:200]
    here = np.array(hasher.signatures(texts))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pickle.loads(pool.apply(_signatures_in_child, (pickle.dumps((hasher, texts)),)))
    assert np.array_equal(here, there)
    assert np.array_equal(np.array(default_hasher().signatures(texts)), here)


def test_estimates_agree_with_datasketch_within_sampling_error():
    from datasketch import MinHash

    english, chinese = sample_documents()
    rng = random.Random(7)
    hasher = default_hasher()
    exact, ours, theirs = [], [], []
    for doc in english[:100] + chinese[:100]:
        units = doc.split(" ") if " " in doc else list(doc)
        for _ in range(max(1, int(len(units) * rng.uniform(0.01, 0.2)))):
            units[rng.randrange(len(units))] = rng.choice(units)
        variant = (" " if " " in doc else "").join(units)
        sets = [reference_shingles(normalize_for_hash(t)) for t in (doc, variant)]
        exact.append(len(sets[0] & sets[1]) / len(sets[0] | sets[1]))
        sig = hasher.signatures([doc, variant])
        ours.append(float(np.mean(sig[0] == sig[1])))
        sketches = []
        for shingles in sets:
            m = MinHash(num_perm=NUM_PERM, seed=1)  # datasketch's default scheme and hash function
            m.update_batch([s.encode("utf-8") for s in shingles])
            sketches.append(m)
        theirs.append(sketches[0].jaccard(sketches[1]))
    exact, ours, theirs = map(np.array, (exact, ours, theirs))
    sigma = np.sqrt(np.maximum(exact * (1 - exact), 0.01) / NUM_PERM)
    assert exact.min() < 0.4 and exact.max() > 0.8  # a spread of similarities, not one value
    for estimate in (ours, theirs):
        z = (estimate - exact) / sigma
        assert abs(z.mean()) < 4 / math.sqrt(len(z))  # unbiased (4 standard errors of the mean)
        assert 0.7 < z.std() < 1.3  # the binomial sampling error, neither more nor less
        assert np.mean(np.abs(z) > 3) < 0.02
    diff = (ours - theirs) / (sigma * math.sqrt(2))  # two independent estimates of the same value
    assert abs(diff.mean()) < 4 / math.sqrt(len(diff)) and np.mean(np.abs(diff) > 3.5) < 0.02


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_near_duplicate_recall_and_false_positives(language):
    english, chinese = sample_documents()
    docs, split, join = (english, str.split, " ".join) if language == "english" else (chinese, list, "".join)
    docs = docs[:300]
    rng = random.Random(11)
    vocab = sorted({u for d in docs for u in split(d)})
    pairs = []
    for doc in docs:
        for low, high in ((0.003, 0.02), (0.02, 0.08), (0.08, 0.2), (0.2, 0.45)):
            pairs.append((doc, join(_variants(rng, split(doc), vocab, rng.uniform(low, high)))))
    hasher = default_hasher()
    sigs = hasher.signatures([t for pair in pairs for t in pair])
    similarity, caught = [], []
    for k, (doc, variant) in enumerate(pairs):
        similarity.append(jaccard(shingles_of(doc), shingles_of(variant)))
        index = NearDuplicateIndex(num_bands=14, rows_per_band=8)
        index.insert(1000 + k, sigs[2 * k])
        caught.append(index.add_if_new(k, sigs[2 * k + 1]) == 1000 + k)
    similarity, caught = np.array(similarity), np.array(caught)
    high, low = similarity >= 0.9, similarity < 0.5
    assert high.sum() >= 100 and low.sum() >= 200, (high.sum(), low.sum())
    recall, false_positive = caught[high].mean(), caught[low].mean()
    print(f"{language}: {len(pairs)} pairs; J>=0.9: {high.sum()} recall {recall:.4f}; J<0.5: {low.sum()} false positives {false_positive:.4f}")
    assert recall >= 0.95
    assert false_positive <= 0.01


def test_threshold_and_manifest_parameters():
    import json

    assert lsh_threshold(14, 8) == pytest.approx(0.7190, abs=1e-4)
    params = dedup_params(DataConfig())
    assert params["num_perm"] == 112 and params["num_bands"] == 14 and params["rows_per_band"] == 8
    assert params["seed"] == 1 and params["shingles"]["word_ngram"] == 5 and params["shingles"]["char_ngram"] == 5
    assert params["threshold"] == pytest.approx(0.719, abs=1e-4)
    json.dumps(params)  # goes into manifest.json as it is


def test_jaccard():
    assert jaccard(np.array([1, 2, 3], np.uint64), np.array([2, 3, 4], np.uint64)) == 0.5
    assert jaccard(np.array([], np.uint64), np.array([], np.uint64)) == 1.0

