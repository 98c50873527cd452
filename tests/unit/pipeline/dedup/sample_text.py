"""Helpers both dedup test modules use: the build's default MinHasher, shingles of a text, and the
sample's distinct long English and Chinese documents (the raw material for planted near duplicates)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.dedup.lsh import NearDuplicateIndex
from pipeline.dedup.minhash import CJK_PATTERN, MinHasher, shingle_hashes
from pipeline.normalize import normalize_for_hash
from tests.conftest import DATA_DIR

SAMPLE = DATA_DIR / "sample" / "train.txt"
NUM_PERM = 112


def default_hasher() -> MinHasher:
    return MinHasher(num_perm=NUM_PERM, seed=1, word_ngram=5, char_ngram=5)


def shingles_of(text: str, word_ngram: int = 5, char_ngram: int = 5) -> np.ndarray:
    return shingle_hashes(normalize_for_hash(text), word_ngram=word_ngram, char_ngram=char_ngram)


@lru_cache(maxsize=1)
def sample_documents() -> tuple[list[str], list[str]]:
    """Distinct English (>= 60 words) and Chinese (>= 80 Han characters) documents of the sample."""
    english, chinese, index = [], [], NearDuplicateIndex(num_bands=14, rows_per_band=8)
    lines = [line.rstrip("\r") for line in SAMPLE.read_text(encoding="utf-8").split("\n")]
    for key, (line, sig) in enumerate(zip(lines, default_hasher().signatures(lines))):
        if index.add_if_new(key, sig) is not None:  # the sample's own injected duplicates
            continue
        han = len(CJK_PATTERN.findall(line))
        if han == 0 and len(line.split()) >= 60:
            english.append(line)
        elif han >= 80 and han > 0.8 * len(line.replace(" ", "")):
            chinese.append(line)
    return english, chinese
