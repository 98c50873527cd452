"""Text rules of `cpt-prep check`, on a seeded sample of documents decoded back to text with the
tokenizer the manifest records (or `--tokenizer`, which must have the same fingerprint).

- Why decode rather than work on token ids: the build deduplicated on normalized TEXT shingles
  (word 5-grams, CJK character 5-grams); token-id shingles would measure another similarity and
  disagree near the threshold. Scripts, U+FFFD and the published heuristics need text anyway. The
  cost is small: the Rust decoder runs at millions of tokens per second and only the sample is
  decoded (`--sample`, default 5,000 documents per split, plus up to 100,000 eval documents for
  the overlap index).
- When the tokenizer cannot be loaded (no network, moved folder), every text rule is reported as
  `skip` with the reason; `--strict` turns that into a failure. Structural checks never need it.
- Near duplicates are re-checked independently of the build: the build's shingles (manifest
  `dedup` parameters), but a MinHash LSH with another seed and more, shorter bands (default 20 x 5),
  and every candidate pair confirmed by its exact shingle Jaccard (>= 0.8 by default). So a pair
  that the build's LSH missed by chance is found here with high probability.
- Residual near-duplicate rate: pairs inside a uniform sample of a fraction f of a split are seen
  with probability f, so the fraction of sampled documents with a sampled partner is divided by f
  (exact when the whole split is sampled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from pipeline.check.quality import evaluate_fraction, evaluate_script_shares
from pipeline.check.rules import RulesConfig
from pipeline.check.shards import DatasetScan
from pipeline.check.text_quality import (
    c4_quality,
    code_points,
    fineweb_quality,
    gopher_quality,
    gopher_repetition,
    is_cjk_dominant,
    script_counts,
)
from schemas.errors import TokenizerError
from schemas.manifest import SPLITS, Manifest
from schemas.verify.results import SKIP, RuleResult

logger = logging.getLogger(__name__)

TEXT_RULES = ("train_eval_near_overlap", "residual_duplicates.near", "replacement_chars", "script_shares",
              "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality")
_HEURISTIC_FUNCS = {"gopher_quality": gopher_quality, "gopher_repetition": gopher_repetition, "c4_quality": c4_quality,
                    "fineweb_quality": fineweb_quality}


@dataclass
class TextSample:
    """Decoded documents of one split: `refs[i]` = (shard, row) of `texts[i]`; `population` = readable documents."""

    split: str
    refs: list[tuple[str, int]]
    texts: list[str]
    population: int


@dataclass
class TextOutcome:
    results: list[RuleResult]
    script_counts: dict[str, dict[str, int]] = field(default_factory=dict)


# name -> (tokenizer, fingerprint): loading and fingerprinting a 150k vocabulary costs ~1 s, and a
# process that checks several data sets (tests, a notebook) should pay it once per tokenizer.
_LOADED: dict[str, tuple[Any, str]] = {}


def load_check_tokenizer(manifest: Manifest, override: Optional[str]) -> tuple[Any, Optional[str]]:
    """(tokenizer, None), or (None, reason to skip). An explicit `--tokenizer` that cannot be loaded or
    that is not the data's tokenizer raises TokenizerError (exit 2): it is a usage mistake."""
    from pipeline.tokenize.load import load_tokenizer
    from schemas.tokenizer import tokenizer_fingerprint

    name = override or manifest.tokenizer.name_or_path
    if name not in _LOADED:
        try:
            tok = load_tokenizer(name)
        except TokenizerError as exc:
            if override:
                raise
            return None, f"the manifest's tokenizer cannot be loaded ({exc}); pass --tokenizer PATH to run the text rules"
        _LOADED[name] = (tok, tokenizer_fingerprint(tok))
    tok, fingerprint = _LOADED[name]
    if fingerprint != manifest.tokenizer.fingerprint:
        msg = (f"tokenizer {name} has fingerprint {fingerprint[:12]}..., the data was made with {manifest.tokenizer.fingerprint[:12]}... "
               f"({manifest.tokenizer.name_or_path}); pass the tokenizer the shards were built with")
        if override:
            raise TokenizerError(msg)
        return None, msg
    return tok, None


def sample_refs(scan: DatasetScan, split: str, size: int, seed: int) -> list[tuple[str, int]]:
    """A seeded uniform sample (without replacement) of (shard, row), in shard order."""
    s = scan.splits[split]
    n = s.num_documents
    if n == 0 or size <= 0:
        return []
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    picked = np.arange(n) if size >= n else np.sort(rng.choice(n, size=size, replace=False))
    return [s.locate(int(i)) for i in picked]


def decode(scan: DatasetScan, tokenizer: Any, refs: list[tuple[str, int]]) -> list[str]:
    """The text of each document (ids without the trailing separator), decoded exactly as written."""
    ids = [scan.content(shard, row).tolist() for shard, row in refs]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(ids, skip_special_tokens=False)
    return tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def run_text_checks(manifest: Manifest, scan: DatasetScan, rules: RulesConfig, *, sample: int, seed: int,
                    tokenizer: Optional[str]) -> TextOutcome:
    """All text rules; each one skipped with the reason when there is no tokenizer or no sample."""
    enabled = _enabled_text_rules(rules)
    reason = None
    tok = None
    if sample == 0:
        reason = "--sample 0: text rules not run"
    elif not scan.splits["train"].num_documents and not scan.splits["eval"].num_documents:
        reason = "no readable documents"
    else:
        tok, reason = load_check_tokenizer(manifest, tokenizer)
    if tok is None:
        return TextOutcome([RuleResult(rule, SKIP, reason) for rule in enabled])

    samples: dict[str, TextSample] = {}
    for split in SPLITS:
        refs = sample_refs(scan, split, sample, seed)
        samples[split] = TextSample(split, refs, decode(scan, tok, refs), scan.splits[split].num_documents)
    out = TextOutcome([])
    if "train_eval_near_overlap" in enabled or "residual_duplicates.near" in enabled:
        from pipeline.check.near import near_duplicate_results

        eval_refs = sample_refs(scan, "eval", rules.near_duplicates.max_eval_documents, seed)
        if eval_refs == samples["eval"].refs:  # the whole eval split is already decoded
            eval_all = samples["eval"]
        else:
            eval_all = TextSample("eval", eval_refs, decode(scan, tok, eval_refs), scan.splits["eval"].num_documents)
        out.results += near_duplicate_results(manifest, samples, eval_all, rules, seed=seed)
    for split in SPLITS:
        s = samples[split]
        if not s.texts:
            continue
        stats = _measure(s, rules)
        out.script_counts[split] = stats["scripts"]
        if rules.replacement_chars.enabled:
            out.results.append(evaluate_fraction("replacement_chars", split, stats["fffd"] / max(stats["chars"], 1),
                                                 rules.replacement_chars.max_fraction,
                                                 f"{stats['fffd']:,} of {stats['chars']:,} sampled characters are U+FFFD:",
                                                 example=stats["fffd_example"], fix="the input had bytes that are not valid text; fix its encoding"))
        out.results += evaluate_script_shares(rules.script_shares, split, stats["scripts"])
        for name, (fails, n, by_reason, example) in stats["heuristics"].items():
            if n == 0:
                out.results.append(RuleResult(name, SKIP, f"{split}: no sampled document it applies to", split=split))
                continue
            top = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])[:4])
            out.results.append(evaluate_fraction(name, split, fails / n, getattr(rules, name).max_fail_fraction,
                                                 f"{fails:,} of {n:,} sampled documents fail it" + (f" ({top})" if top else "") + ":",
                                                 example=example))
    return out


def _enabled_text_rules(rules: RulesConfig) -> list[str]:
    on = ["train_eval_near_overlap"]
    if rules.residual_duplicates.enabled:
        on.append("residual_duplicates.near")
    on += [name for name in ("replacement_chars", "script_shares") if getattr(rules, name).enabled]
    on += [name for name in _HEURISTIC_FUNCS if getattr(rules, name).enabled]
    return on


def _measure(s: TextSample, rules: RulesConfig) -> dict[str, Any]:
    scripts: dict[str, int] = {}
    chars = fffd = 0
    fffd_example = None
    active = {name: fn for name, fn in _HEURISTIC_FUNCS.items() if getattr(rules, name).enabled}
    heur = {name: [0, 0, {}, None] for name in active}
    for ref, text in zip(s.refs, s.texts):
        counts = script_counts(text)
        for k, v in counts.items():
            scripts[k] = scripts.get(k, 0) + v
        n_bad = int(np.count_nonzero(code_points(text) == 0xFFFD))
        chars += len(text)
        fffd += n_bad
        if n_bad and fffd_example is None:
            fffd_example = ref
        cjk = is_cjk_dominant(counts)
        for name, fn in active.items():
            h = heur[name]
            if not text.strip():
                continue
            h[1] += 1
            why = fn(text, getattr(rules, name).params, cjk=cjk)
            if why:
                h[0] += 1
                h[2][why] = h[2].get(why, 0) + 1
                h[3] = h[3] or ref
    return {"scripts": scripts, "chars": chars, "fffd": fffd, "fffd_example": fffd_example,
            "heuristics": {k: tuple(v) for k, v in heur.items()}}
