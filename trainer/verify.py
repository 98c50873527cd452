"""Everything `cpt-train` can check before the model's weights load: the manifest and its shards,
the tokenizer against the data and the model's embedding, and the `data` config against the
settings the shards were built with.

Invariants:
- Before the model loads, the data set passes every structural rule of `cpt-prep check`, from the
  one implementation both programs import (schemas.verify): a manifest with an unknown
  `schema_version`, a shard missing, resized, altered (sha256), listed twice, of another dtype, a
  document without its separator or with an id beyond the vocabulary, totals or accounting that do
  not add up, is refused with a one-line `ManifestError` giving the check's rule and reason. It is
  one read of every byte (sha256 and the row scan, ~0.5 s per 1e8 tokens on top of the hash, see
  bench/bench_verify.py); `training.verify_checksums false` skips only the sha256.
- The tokenizer must have the exact token -> id map the shards were made with
  (`schemas.tokenizer.tokenizer_fingerprint`), and every id the data can hold
  (`0 .. manifest.tokenizer.vocab_size - 1`) must have a row in the model's embedding.
- `data` keys are preparation settings: their values come from the manifest. A value the user set
  explicitly that differs from the manifest's is an error (rebuild the shards or drop the key);
  `data.mlm_probability` has no meaning for a causal LM and is reported as ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from schemas.config import PREP_KEYS, CptConfig, DataConfig
from schemas.errors import ConfigError, DataError, ManifestError, TokenizerError
from schemas.manifest import MANIFEST_NAME, Manifest, read_manifest
from schemas.tokenizer import tokenizer_fingerprint
from schemas.verify.dataset import verify_or_raise

logger = logging.getLogger(__name__)


def load_verified_manifest(manifest_path: str | Path, *, checksums: bool) -> tuple[Manifest, Path]:
    """Read the manifest and run every structural rule of `cpt-prep check` on it and its shards
    (schemas.verify: files, sizes, sha256 when `checksums`, dtype, separators, ids below the
    vocabulary, totals, accounting, each shard listed once).

    `manifest_path` is `manifest.json` or its folder. Returns `(manifest, folder)`; raises a
    one-line `ManifestError` with the check's reason otherwise (and `DataError` when the train split
    holds no tokens)."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest = read_manifest(path)
    folder = path.parent
    verify_or_raise(manifest, folder, checksums=checksums, source=str(path))
    train = manifest.splits.get("train")
    if train is None or train.num_tokens == 0:
        raise DataError(f"{path} has no training tokens; rebuild with `cpt-prep build` on inputs that keep at least one training document")
    logger.info(
        "manifest %s: schema %d, %d train tokens in %d shards, %d eval tokens; structure verified as `cpt-prep check` does (%s)",
        path,
        manifest.schema_version,
        train.num_tokens,
        len(train.shards),
        manifest.splits["eval"].num_tokens if "eval" in manifest.splits else 0,
        "sha256 included" if checksums else "sha256 skipped: training.verify_checksums is off",
    )
    return manifest, folder


def _describe(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", None) or "?"
    return f"{name} ({type(tokenizer).__name__}, {len(tokenizer)} tokens)"


def check_tokenizer_matches(manifest: Manifest, tokenizer: Any, *, embedding_rows: int) -> None:
    """Raise TokenizerError unless `tokenizer` is the one the shards were made with and every id
    in the data fits the model's embedding (`embedding_rows`)."""
    info = manifest.tokenizer
    theirs = f"{info.name_or_path} ({info.class_name}, {info.vocab_size} tokens)"
    actual = tokenizer_fingerprint(tokenizer)
    if actual != info.fingerprint:
        raise TokenizerError(
            f"the shards were made with tokenizer {theirs}, fingerprint {info.fingerprint[:12]}..., but the model's tokenizer "
            f"{_describe(tokenizer)} has fingerprint {actual[:12]}...; rebuild the shards with "
            f"`cpt-prep build ... --tokenizer <model path>` or train the model the shards were made for"
        )
    if info.vocab_size > embedding_rows:
        raise TokenizerError(
            f"the data holds ids up to {info.vocab_size - 1} (tokenizer {theirs}) but the model's embedding has only "
            f"{embedding_rows} rows; use a model whose embedding covers the tokenizer (resize it before training)"
        )


def _same(a: Any, b: Any) -> bool:
    # JSON round trips turn 1.0 into 1 and back; compare numbers as numbers (bools stay strict).
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is bool and type(b) is bool and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _flag_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resolve_data_config(config: CptConfig, manifest: Manifest) -> list[str]:
    """Take every preparation key (`schemas.config.PREP_KEYS`) from the manifest into `config.data`.

    A key the user set explicitly to a different value raises ConfigError (rebuild or drop it).
    Returns the report lines for the log, one per key, plus one for `mlm_probability` when set."""
    recorded = manifest.config
    values: dict[str, Any] = {}
    lines: list[str] = []
    for key in PREP_KEYS:
        ours = getattr(config.data, key)
        if key not in recorded:
            # A manifest written before this key existed: the key had no effect on these shards.
            values[key] = ours
            lines.append(f"data.{key}={_flag_value(ours)} (not recorded in the manifest; has no effect on these shards)")
            continue
        theirs = recorded[key]
        if f"data.{key}" in config.explicit and not _same(ours, theirs):
            raise ConfigError(
                f"data.{key}={_flag_value(ours)} conflicts with the shards, which were built with {key}={_flag_value(theirs)}; "
                f"rebuild them with `cpt-prep build ... --{key} {_flag_value(ours)}` or drop data.{key} from the config and flags"
            )
        values[key] = theirs
        lines.append(f"data.{key}={_flag_value(theirs)} (from manifest)")
    mlm = config.data.mlm_probability
    if mlm is not None:
        lines.append(
            f"data.mlm_probability={mlm} is ignored: masking has no meaning for a causal LM, which learns to predict every next token; "
            "drop the key to silence this line"
        )
    try:
        config.data = DataConfig(**values, mlm_probability=mlm)
    except ConfigError as exc:
        raise ManifestError(f"the manifest's data config is invalid ({exc}); rebuild the shards with `cpt-prep build`") from None
    except TypeError as exc:  # pragma: no cover - keys come from DataConfig's own fields
        raise ManifestError(f"the manifest's data config is unreadable ({exc}); rebuild the shards with `cpt-prep build`") from None
    return lines

