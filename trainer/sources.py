"""The sources of a run: each manifest verified, named, weighted and opened as packed windows,
before any weights load.

- Every manifest is verified as a single one always was (`trainer.verify.load_verified_manifest`,
  one call per manifest) and opened as packed train windows (and eval windows when it has an
  eval split).
- All must share the tokenizer (fingerprint of the token -> id map) and the document separator
  (token and id): a mixture of differently tokenized shards would be silent garbage. Otherwise a
  one-line error names both manifests.
- Names: `training.mixture_names`, else each manifest's folder name (`domain/manifest.json` ->
  `domain`); they must be unique and usable in metric keys. The same manifest twice is refused.
- `data` keys: the first source's recorded settings become `config.data` (written to
  cpt_config.json); a data key the user set explicitly must match every source's manifest.
- Eval: a source without an eval split is trained on but has no `eval_loss/<name>`; it is left out
  of the combined eval loss (see trainer/evaluate.py), said once here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from schemas.config import SOURCE_NAME, CptConfig
from schemas.errors import ConfigError, TokenizerError
from schemas.manifest import MANIFEST_NAME, Manifest
from trainer.checkpoint import manifest_record
from trainer.data import PackedWindows
from trainer.mixture import MixtureSource
from trainer.verify import load_verified_manifest, resolve_data_config

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """One manifest of the run."""

    name: str
    weight: float  # share of training tokens; 0 = evaluated only
    manifest_path: Path  # manifest.json, as given
    record: dict[str, str]  # {path (absolute), sha256 of manifest.json}: the lineage of checkpoints
    manifest: Manifest
    folder: Path
    train: PackedWindows
    eval: Optional[PackedWindows]

    def for_loader(self) -> MixtureSource:
        return MixtureSource(name=self.name, windows=self.train, weight=self.weight, sha256=self.record["sha256"])


def manifest_file(path: str | Path) -> Path:
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def source_names(paths: Sequence[str | Path], names: Sequence[str]) -> list[str]:
    """`names` when given, else each manifest's folder name; unique, or a one-line error."""
    if names:
        return list(names)
    found = [manifest_file(p).resolve().parent.name for p in paths]
    for name in found:
        if not SOURCE_NAME.fullmatch(name):
            raise ConfigError(f"source name {name!r} (the folder of a manifest) cannot be a metric key; "
                              "name the sources with --mixture_names, e.g. --mixture_names domain,general")
    repeated = sorted({n for n in found if found.count(n) > 1})
    if repeated:
        raise ConfigError(f"two manifests sit in folders named {repeated[0]!r}, so their sources would share a name; "
                          "name them with --mixture_names, e.g. --mixture_names domain,general")
    return found


def _same_tokenizer(first: Source, other: Source) -> None:
    a, b = first.manifest.tokenizer, other.manifest.tokenizer
    if a.fingerprint != b.fingerprint:
        raise TokenizerError(
            f"manifests {first.record['path']} and {other.record['path']} were built with different tokenizers "
            f"({a.name_or_path}, fingerprint {a.fingerprint[:12]}... vs {b.name_or_path}, fingerprint {b.fingerprint[:12]}...); "
            f"rebuild {other.name} with `cpt-prep build ... --tokenizer` the tokenizer of {first.name}"
        )
    if (a.separator_token, a.separator_id) != (b.separator_token, b.separator_id):
        raise TokenizerError(
            f"manifests {first.record['path']} and {other.record['path']} end documents with different separators "
            f"({a.separator_token!r} id {a.separator_id} vs {b.separator_token!r} id {b.separator_id}); "
            f"rebuild {other.name} with `cpt-prep build ... --separator_token '{a.separator_token}'`"
        )


def _log_data_report(name: str, lines: list[str]) -> None:
    """One line for the keys taken from the manifest, one line each for anything else (ignored keys)."""
    suffix = " (from manifest)"
    taken = [line[: -len(suffix)] for line in lines if line.endswith(suffix)]
    if taken:
        logger.info("data config of %s from its manifest: %s", name, ", ".join(taken))
    for line in lines:
        if not line.endswith(suffix):
            logger.warning("%s: %s", name, line)


def load_sources(config: CptConfig) -> list[Source]:
    """Verify, name and open every manifest of `config.training.manifests`."""
    tc = config.training
    paths = list(tc.manifests)
    if not paths:
        raise ConfigError("--manifest is required: pass the manifest.json written by `cpt-prep build` (e.g. --manifest shards/manifest.json)")
    names = source_names(paths, tc.mixture_names)
    weights = list(tc.mixture_weights) or [1.0]
    seen: dict[str, str] = {}
    sources: list[Source] = []
    for path, name, weight in zip(paths, names, weights):
        manifest, folder = load_verified_manifest(path, checksums=tc.verify_checksums)
        record = manifest_record(path)
        if record["sha256"] in seen:
            raise ConfigError(f"manifest {path} is listed twice (also as {seen[record['sha256']]}); list each source once and set its weight")
        seen[record["sha256"]] = str(path)
        # resolve_data_config sets config.data from the manifest: the first source's settings are the
        # run's; the others are only checked against the keys the user set.
        _log_data_report(name, resolve_data_config(config if not sources else copy.deepcopy(config), manifest))
        max_length = config.model.max_length
        train = PackedWindows(manifest, folder, "train", max_length=max_length, label=name)
        evals = None
        if manifest.splits.get("eval") is not None and manifest.splits["eval"].num_tokens > 0:
            evals = PackedWindows(manifest, folder, "eval", max_length=max_length, label=name)
        source = Source(name, weight, manifest_file(path), record, manifest, folder, train, evals)
        if sources:
            _same_tokenizer(sources[0], source)
        sources.append(source)
    missing = [s.name for s in sources if s.eval is None]
    if len(missing) == len(sources):
        logger.warning("no manifest has an eval split: no eval loss, no best_model/ (build with --eval FILE or --eval_fraction F)")
    elif missing:
        logger.warning("source(s) %s have no eval split: no eval_loss/<name> for them, and the combined eval_loss weights the others' "
                       "eval losses by their mixture weights, renormalised", ", ".join(missing))
    if len(sources) > 1:
        logger.info("mixture: %s", ", ".join(f"{s.name} {s.weight:g} ({s.train.num_tokens:,} train tokens)" for s in sources))
    return sources
