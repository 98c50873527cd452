"""Near-duplicate re-checks of `cpt-prep check`: sampled train documents against an index of eval
documents (train/eval overlap), and pairs inside each split's sample (residual duplicates).

- Shingles are the build's (pipeline.dedup.minhash: normalized text, word n-grams and CJK character
  n-grams with the n recorded in the manifest), so "similar" means what it meant to the build.
- The LSH is not the build's: other permutations (seed `CHECK_SEED_OFFSET + --seed`, never the
  build's seed) and by default 20 bands x 5 rows, which makes a pair at Jaccard 0.8 a candidate
  with p = 1 - (1 - 0.8^5)^20 = 0.9996 (the build's 14 x 8: 0.92). A pair the build's LSH missed
  by chance is therefore found here almost surely; a pair that is really below the threshold is
  never reported, because every candidate is confirmed by its exact shingle Jaccard.
- Candidate pairs come from equal band hashes (sorted numpy arrays, no Python dict per band);
  a band bucket larger than `MAX_BUCKET` (a huge duplicate cluster) contributes only pairs with its
  first member, which is enough to flag each of its documents.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from pipeline.check.rules import RulesConfig
from schemas.config import DataConfig
from schemas.manifest import Manifest
from schemas.verify.results import FAIL, PASS, SKIP, RuleResult

logger = logging.getLogger(__name__)

CHECK_SEED_OFFSET = 7919  # added to --seed so the check's permutations differ from the build's (dedup_seed 1 by default)
MAX_BUCKET = 64


def shingle_settings(manifest: Manifest) -> tuple[int, int]:
    """(word_ngram, char_ngram) the build used: manifest.dedup.shingles, else its config, else defaults."""
    shingles = manifest.dedup.get("shingles") if isinstance(manifest.dedup.get("shingles"), dict) else {}
    default = DataConfig()
    word = shingles.get("word_ngram", manifest.config.get("dedup_word_ngram", default.dedup_word_ngram))
    char = shingles.get("char_ngram", manifest.config.get("dedup_char_ngram", default.dedup_char_ngram))
    return int(word), int(char)


class NearChecker:
    """Signatures, band hashes and exact Jaccard for a list of texts, with the check's own LSH."""

    def __init__(self, manifest: Manifest, rules: RulesConfig, *, seed: int) -> None:
        from pipeline import normalize
        from pipeline.dedup import lsh, minhash

        self.lsh, self.minhash, self.normalize = lsh, minhash, normalize
        nd = rules.near_duplicates
        self.word, self.char = shingle_settings(manifest)
        self.bands, self.rows, self.threshold = nd.num_bands, nd.rows_per_band, nd.jaccard_threshold
        check_seed = CHECK_SEED_OFFSET + seed
        if check_seed == manifest.dedup.get("seed"):
            check_seed += 1
        self.hasher = minhash.MinHasher(num_perm=self.bands * self.rows, seed=check_seed, word_ngram=self.word, char_ngram=self.char)
        self._shingles: dict[int, np.ndarray] = {}

    def band_keys(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_bands) uint64 band hashes."""
        if not texts:
            return np.zeros((0, self.bands), dtype=np.uint64)
        sigs = np.asarray(self.hasher.signatures(texts), dtype=np.uint64).reshape(len(texts), -1)
        return self.lsh.band_keys(sigs, num_bands=self.bands, rows_per_band=self.rows)

    def jaccard(self, a: str, b: str) -> float:
        sa = self.minhash.shingle_hashes(self.normalize.normalize_for_hash(a), word_ngram=self.word, char_ngram=self.char)
        sb = self.minhash.shingle_hashes(self.normalize.normalize_for_hash(b), word_ngram=self.word, char_ngram=self.char)
        return float(self.minhash.jaccard(sa, sb))


def candidate_pairs(query: np.ndarray, index: Optional[np.ndarray] = None) -> np.ndarray:
    """(k, 2) unique pairs (i, j) sharing a band: query row i vs index row j, or, without an index,
    pairs i < j inside `query`."""
    pairs = []
    for band in range(query.shape[1]):
        if index is not None:
            keys = index[:, band]
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            lo = np.searchsorted(sorted_keys, query[:, band], side="left")
            hi = np.searchsorted(sorted_keys, query[:, band], side="right")
            for i in np.flatnonzero(hi > lo):
                for j in order[lo[i]: min(hi[i], lo[i] + MAX_BUCKET)]:
                    pairs.append((int(i), int(j)))
        else:
            keys = query[:, band]
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            starts = np.flatnonzero(np.concatenate(([True], sk[1:] != sk[:-1])))
            ends = np.append(starts[1:], len(sk))
            for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = np.sort(order[s:e])
                if len(members) > MAX_BUCKET:
                    pairs += [(int(members[0]), int(m)) for m in members[1:]]
                else:
                    pairs += [(int(a), int(b)) for k, a in enumerate(members) for b in members[k + 1:]]
    return np.unique(np.array(pairs, dtype=np.int64).reshape(-1, 2), axis=0)


def near_duplicate_results(manifest: Manifest, samples: dict[str, Any], eval_all: Any, rules: RulesConfig, *, seed: int) -> list[RuleResult]:
    """`train_eval_near_overlap` and, when enabled, `residual_duplicates.near` per split."""
    checker = NearChecker(manifest, rules, seed=seed)
    out = [_overlap(checker, samples["train"], eval_all)]
    if rules.residual_duplicates.enabled:
        for split in ("train", "eval"):
            out.append(_residual(checker, samples[split], rules.residual_duplicates.max_near_fraction))
    return out


def _overlap(checker: NearChecker, train: Any, ev: Any) -> RuleResult:
    rule = "train_eval_near_overlap"
    if not train.texts:
        return RuleResult(rule, SKIP, "no train documents to check", split="train")
    if not ev.texts:
        return RuleResult(rule, PASS, "no eval documents: nothing can overlap", value=0, threshold=0, split="train")
    pairs = candidate_pairs(checker.band_keys(train.texts), checker.band_keys(ev.texts))
    found: dict[int, tuple[int, float]] = {}
    for i, j in pairs.tolist():
        if i in found:
            continue
        sim = checker.jaccard(train.texts[i], ev.texts[j])
        if sim >= checker.threshold:
            found[i] = (j, sim)
    scope = (f"{len(train.texts):,} of {train.population:,} train documents (seeded sample) against "
             f"{len(ev.texts):,} of {ev.population:,} eval documents, shingle Jaccard >= {checker.threshold}")
    if not found:
        return RuleResult(rule, PASS, f"no near duplicate: {scope}", value=0, threshold=0, split="train")
    i = min(found)
    j, sim = found[i]
    (ts, tr), (es, er) = train.refs[i], ev.refs[j]
    return RuleResult(rule, FAIL, f"{len(found):,} sampled train documents near-duplicate an eval document, e.g. {ts} row {tr} ~ {es} "
                      f"row {er} (Jaccard {sim:.2f}); checked {scope}; rebuild with data.decontaminate on",
                      value=len(found), threshold=0, split="train", shard=ts, row=tr)


def _residual(checker: NearChecker, sample: Any, limit: float) -> RuleResult:
    rule = "residual_duplicates.near"
    n = len(sample.texts)
    if n < 2:
        return RuleResult(rule, SKIP, f"{sample.split}: fewer than 2 sampled documents", split=sample.split)
    pairs = candidate_pairs(checker.band_keys(sample.texts))
    dup_docs: set[int] = set()
    first_pair = None
    for a, b in pairs.tolist():
        if a in dup_docs and b in dup_docs:
            continue
        sim = checker.jaccard(sample.texts[a], sample.texts[b])
        if sim >= checker.threshold:
            dup_docs.update((a, b))
            first_pair = first_pair or (a, b, sim)
    fraction_sampled = n / max(sample.population, 1)
    estimate = min(len(dup_docs) / n / fraction_sampled, 1.0)
    ok = estimate <= limit
    how = "" if fraction_sampled >= 1 else f" (seen in a {fraction_sampled:.1%} sample, divided by that fraction)"
    msg = f"{sample.split}: estimated {estimate:.2%} of documents have a near duplicate in the split{how}"
    where: dict[str, Any] = {}
    if first_pair and not ok:
        a, b, sim = first_pair
        (sa, ra), (sb, rb) = sample.refs[a], sample.refs[b]
        msg += f", above the maximum {limit:.2%}: e.g. {sa} row {ra} ~ {sb} row {rb} (Jaccard {sim:.2f}); rebuild with data.filter_duplicates on"
        where = {"shard": sa, "row": ra}
    return RuleResult(rule, PASS if ok else FAIL, msg, value=round(estimate, 6), threshold=limit, split=sample.split, **where)
