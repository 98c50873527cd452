"""The rules of `cpt-prep check`: the rules file (thresholds, strict keys) and the names of the
structural checks. The result record is schemas.verify.results.RuleResult; the structural checks
run in schemas.verify (shared with cpt-train) and pipeline.check.dataset, the quality rules in
pipeline.check.quality, the text rules in pipeline.check.text.
- The rules file is JSON: `{rule_name: {key: value}}`. Rules and keys left out keep their defaults;
  an unknown rule or key is a ConfigError (exit 2), never ignored. Top-level keys starting with `_`
  are comments. Structural checks (`STRUCTURAL_RULES`) are always on and are not in the file.
- Defaults are chosen to pass a healthy data set of any size (the bundled sample included) and to
  fail a broken build: empty splits, empty documents, a drop reason eating half the corpus,
  surviving duplicates, mojibake. The published heuristics are off by default: they were made to
  filter English web pages and reject most short documents (reviews, chat, one-line records).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.check.text_quality import (
    SCRIPTS,
    C4QualityConfig,
    FineWebQualityConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
)
from schemas.config import read_json_file
from schemas.errors import ConfigError
from schemas.manifest import DROP_REASONS, SPLITS

# Always on; listed so the README, the report and `--format json` users can rely on the names.
STRUCTURAL_RULES = (
    "schema_version", "shard_present", "shard_size", "shard_sha256", "shard_readable", "token_dtype",
    "separator_at_end", "no_control_token_inside", "ids_below_vocab", "provenance", "shard_totals",
    "split_totals", "accounting", "shard_listed_once", "train_eval_exact_overlap", "train_eval_near_overlap",
)


# ------------------------------------------------------------------------------------ rule configs
DEFAULT_MAX_DROP = {
    "empty": 0.5,
    "too_short": 0.5,
    "invalid_utf8": 0.05,  # more than 1 in 20 records undecodable means a wrong encoding, not noise
    "exact_duplicate": 0.5,
    "near_duplicate": 0.5,
    "overlaps_eval": 0.1,
    "over_max_samples": 1.0,  # chosen by the user's max_*_samples: never a failure by default
}


@dataclass
class DropFractionRule:
    """Fraction of input records dropped, per reason and in total (dropped / accounting.num_records)."""

    enabled: bool = True
    max_fraction: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_DROP))
    """Per drop reason (schemas.manifest.DROP_REASONS): the highest fraction allowed."""
    max_total_fraction: float = 0.9
    """All reasons together; `over_max_samples` is not counted (it is a deliberate cap)."""


@dataclass
class SplitSizeRule:
    """Minimum size of each split."""

    enabled: bool = True
    min_tokens: dict[str, int] = field(default_factory=lambda: {"train": 1, "eval": 0})
    """Tokens (separators included) per split."""
    min_documents: dict[str, int] = field(default_factory=lambda: {"train": 1, "eval": 0})
    """Documents per split."""


@dataclass
class LengthPercentilesRule:
    """Bounds on document-length percentiles, in tokens without the separator, for every split
    with documents. Keys `pNN` (0 < NN <= 100, decimals allowed); nearest-rank percentiles."""

    enabled: bool = True
    bounds: dict[str, dict[str, Optional[float]]] = field(
        default_factory=lambda: {"p1": {"min": 1}, "p50": {"min": 2}, "p99": {"max": 1_000_000}})
    """{"p50": {"min": 2, "max": null}}: null or a missing side means unbounded."""


@dataclass
class ShortDocumentsRule:
    """Fraction of documents with at most `max_tokens` tokens (separator excluded), per split."""

    enabled: bool = True
    max_tokens: int = 2
    """A document this short or shorter counts as very short."""
    max_fraction: float = 0.2
    """The highest fraction of very short documents allowed."""


@dataclass
class ResidualDuplicatesRule:
    """Duplicates left inside a split after the build's deduplication."""

    enabled: bool = True
    max_exact_fraction: float = 0.01
    """Documents whose token ids equal an earlier document's, over every document of the split."""
    max_near_fraction: float = 0.05
    """Estimated fraction of documents with a near duplicate in the split, from the text sample."""


@dataclass
class NearDuplicateSettings:
    """How near duplicates are re-checked (train/eval overlap and residual duplicates). The build's
    own shingles are used; the LSH is independent of the build's (other seed, more bands), and every
    candidate pair is confirmed by its exact shingle Jaccard."""

    jaccard_threshold: float = 0.8
    """Pairs at or above this exact shingle Jaccard are near duplicates."""
    num_bands: int = 20
    """LSH bands; with 5 rows a pair at Jaccard 0.8 is a candidate with p = 0.9996."""
    rows_per_band: int = 5
    """Hashes per band."""
    max_eval_documents: int = 100_000
    """Eval documents indexed (a seeded sample beyond this)."""


@dataclass
class ReplacementCharsRule:
    """Fraction of characters that are U+FFFD (the mark of bytes that were not valid text), in the sample."""

    enabled: bool = True
    max_fraction: float = 0.001


@dataclass
class ScriptSharesRule:
    """Share of letters per Unicode script (pipeline.check.text_quality.SCRIPTS), over the sample of each split."""

    enabled: bool = True
    bounds: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    """{"Han": {"min": 0.3, "max": 0.7}}; by default no bounds: the shares are reported only."""


@dataclass
class HeuristicRule:
    """A published per-document filter applied to the sample; fails when too many documents fail it."""

    enabled: bool = False
    max_fail_fraction: float = 0.2
    """The highest fraction of sampled documents allowed to fail the filter."""
    params: Any = None
    """The filter's own thresholds (its dataclass in pipeline.check.text_quality); their keys sit beside
    `enabled` in the rules file."""


HEURISTICS = {
    "gopher_quality": GopherQualityConfig,
    "gopher_repetition": GopherRepetitionConfig,
    "c4_quality": C4QualityConfig,
    "fineweb_quality": FineWebQualityConfig,
}


@dataclass
class RulesConfig:
    """Every configurable rule. JSON keys are the field names."""

    drop_fraction: DropFractionRule = field(default_factory=DropFractionRule)
    split_size: SplitSizeRule = field(default_factory=SplitSizeRule)
    length_percentiles: LengthPercentilesRule = field(default_factory=LengthPercentilesRule)
    short_documents: ShortDocumentsRule = field(default_factory=ShortDocumentsRule)
    residual_duplicates: ResidualDuplicatesRule = field(default_factory=ResidualDuplicatesRule)
    near_duplicates: NearDuplicateSettings = field(default_factory=NearDuplicateSettings)
    replacement_chars: ReplacementCharsRule = field(default_factory=ReplacementCharsRule)
    script_shares: ScriptSharesRule = field(default_factory=ScriptSharesRule)
    gopher_quality: HeuristicRule = field(default_factory=lambda: HeuristicRule(params=GopherQualityConfig()))
    gopher_repetition: HeuristicRule = field(default_factory=lambda: HeuristicRule(params=GopherRepetitionConfig()))
    c4_quality: HeuristicRule = field(default_factory=lambda: HeuristicRule(params=C4QualityConfig()))
    fineweb_quality: HeuristicRule = field(default_factory=lambda: HeuristicRule(params=FineWebQualityConfig()))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            rule = getattr(self, f.name)
            d = dataclasses.asdict(rule)
            if isinstance(rule, HeuristicRule):
                d = {"enabled": rule.enabled, "max_fail_fraction": rule.max_fail_fraction, **d["params"]}
            out[f.name] = d
        return out

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "rules") -> "RulesConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a JSON object {{rule: {{key: value}}}}; got {type(raw).__name__}")
        cfg = cls()
        known = [f.name for f in dataclasses.fields(cls)]
        for name, content in raw.items():
            if name.startswith("_"):
                continue  # a comment
            if name not in known:
                raise ConfigError(f"unknown rule {name!r} in {source}; known rules: {', '.join(known)}")
            if not isinstance(content, dict):
                raise ConfigError(f"rule {name!r} in {source} must be an object of settings; got {json.dumps(content)}")
            rule = getattr(cfg, name)
            if isinstance(rule, HeuristicRule):
                own = {k: content[k] for k in ("enabled", "max_fail_fraction") if k in content}
                _update(rule, own, name, source)
                _update(rule.params, {k: v for k, v in content.items() if k not in own}, name, source)
            else:
                _update(rule, content, name, source)
        _validate(cfg, source)
        return cfg


def load_rules(path: Optional[str | Path]) -> RulesConfig:
    """The rules file at `path` merged over the defaults (defaults only when None)."""
    if path is None:
        return RulesConfig()
    raw = read_json_file(path, what="rules file", flag="--rules (see data/check_rules.json)")
    return RulesConfig.from_dict(raw, source=str(path))


def _update(target: Any, values: dict[str, Any], rule: str, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target) if f.name != "params"}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in rule {rule!r} of {source}; known keys: {', '.join(fields)}")
        current = getattr(target, key)
        where = f"{rule}.{key}={json.dumps(value)} in {source}"
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where} is invalid: expected true or false")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} is invalid: expected an object")
            value = {**current, **value} if rule in ("drop_fraction", "split_size") else value
        elif isinstance(current, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where} is invalid: expected a number")
            if isinstance(current, int):
                if not float(value).is_integer():
                    raise ConfigError(f"{where} is invalid: expected an integer")
                value = int(value)
        setattr(target, key, value)


_PERCENTILE = re.compile(r"^p(\d+(\.\d+)?)$")


def _check_bounds(bounds: Any, keys_ok, what: str, where: str) -> None:
    for key, b in bounds.items():
        if not keys_ok(key):
            raise ConfigError(f"{where}: unknown {what} {key!r}")
        if not isinstance(b, dict) or set(b) - {"min", "max"}:
            raise ConfigError(f"{where}.{key}={json.dumps(b)} is invalid: expected {{\"min\": number|null, \"max\": number|null}}")
        for side in ("min", "max"):
            v = b.get(side)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{where}.{key}.{side}={json.dumps(v)} is invalid: expected a number or null")


def _validate(cfg: RulesConfig, source: str) -> None:
    def fraction(name: str, value: Any) -> None:
        if not 0 <= value <= 1:
            raise ConfigError(f"{name}={value} in {source} is invalid: expected a fraction in [0, 1]")

    for reason, v in cfg.drop_fraction.max_fraction.items():
        if reason not in DROP_REASONS:
            raise ConfigError(f"drop_fraction.max_fraction in {source}: unknown drop reason {reason!r}; known: {', '.join(DROP_REASONS)}")
        fraction(f"drop_fraction.max_fraction.{reason}", v)
    fraction("drop_fraction.max_total_fraction", cfg.drop_fraction.max_total_fraction)
    for key in ("min_tokens", "min_documents"):
        for split, v in getattr(cfg.split_size, key).items():
            if split not in SPLITS or isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"split_size.{key}.{split}={json.dumps(v)} in {source} is invalid: expected splits {list(SPLITS)} with integers >= 0")
    _check_bounds(cfg.length_percentiles.bounds, lambda k: bool(_PERCENTILE.match(k)) and 0 < float(k[1:]) <= 100,
                  "percentile (use p1, p50, p99.9, ...)", f"length_percentiles.bounds in {source}")
    _check_bounds(cfg.script_shares.bounds, lambda k: k in SCRIPTS, f"script (known: {', '.join(SCRIPTS)})",
                  f"script_shares.bounds in {source}")
    for name in ("max_exact_fraction", "max_near_fraction"):
        fraction(f"residual_duplicates.{name}", getattr(cfg.residual_duplicates, name))
    fraction("short_documents.max_fraction", cfg.short_documents.max_fraction)
    fraction("replacement_chars.max_fraction", cfg.replacement_chars.max_fraction)
    nd = cfg.near_duplicates
    fraction("near_duplicates.jaccard_threshold", nd.jaccard_threshold)
    for name in ("num_bands", "rows_per_band", "max_eval_documents"):
        if getattr(nd, name) < 1:
            raise ConfigError(f"near_duplicates.{name}={getattr(nd, name)} in {source} is invalid: expected an integer >= 1")
    for name in HEURISTICS:
        fraction(f"{name}.max_fail_fraction", getattr(cfg, name).max_fail_fraction)
    rep = cfg.gopher_repetition.params
    for key in ("max_top_ngram_char_fraction", "max_duplicate_ngram_char_fraction"):
        for n, v in getattr(rep, key).items():
            if not str(n).isdigit() or int(n) < 1 or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"gopher_repetition.{key} in {source} is invalid at {n!r}: expected {{\"N\": fraction}} with N >= 1")
