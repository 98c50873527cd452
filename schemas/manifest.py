"""The data contract: `manifest.json` plus Arrow token shards, versioned by `SCHEMA_VERSION`.

Invariants (both programs rely on them; `cpt-prep check` re-verifies them):
- A shard is an Arrow IPC *stream* file (what `datasets` writes), one row per document, columns
  `SHARD_COLUMNS`: `input_ids` (uint16 when the vocabulary has at most 65,536 ids, else uint32)
  ending with exactly one separator token, then `source_index` (index into `Manifest.inputs`) and
  `line` (1-based record number in that input): the provenance of the document.
- The manifest is written last, atomically (temporary name + rename), only when every shard is
  complete: its presence means the data set is whole.
- Shard paths are relative POSIX paths that stay inside the manifest's folder.
- Accounting: every input record has exactly one outcome, so
  `num_records == sum(kept.values()) + sum(dropped.values())`.
- A creation time aside, the same inputs and config give a byte-identical manifest and shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

import pyarrow as pa

from schemas.errors import ManifestError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "eval")

# Outcomes of a dropped record. `kept` is the only other outcome.
DROP_REASONS = (
    "empty",  # blank after stripping whitespace
    "too_short",  # fewer than data.min_length characters
    "invalid_utf8",  # bytes that are not UTF-8 (or contain NUL)
    "invalid_record",  # a .jsonl line that is not a JSON object with a string text field
    "exact_duplicate",  # same normalized text as an earlier kept document
    "near_duplicate",  # MinHash LSH match with an earlier kept document
    "overlaps_eval",  # training document that duplicates or near-duplicates an eval document
    "over_max_samples",  # beyond data.max_train_samples / data.max_eval_samples
)

SHARD_COLUMNS = ("input_ids", "source_index", "line")
# Per-record outcome log (optional file, listed in the manifest): one row per dropped record.
DROP_LOG_COLUMNS = ("source_index", "line", "reason", "duplicate_of_source_index", "duplicate_of_line")

_CHUNK_BYTES = 8 * 2**20


def token_dtype_for_vocab(vocab_size: int) -> str:
    """`uint16` when every id (0 .. vocab_size-1) fits in 16 bits, else `uint32`."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def shard_schema(token_dtype: str) -> pa.Schema:
    """The Arrow schema of a token shard."""
    if token_dtype not in ("uint16", "uint32"):
        raise ManifestError(f"token dtype {token_dtype!r} is not supported; expected uint16 or uint32")
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.from_numpy_dtype(token_dtype))),
            ("source_index", pa.uint32()),
            ("line", pa.uint64()),
        ]
    )


def drop_log_schema() -> pa.Schema:
    """The Arrow schema of the drop log; duplicate_of_* are -1 when the reason has no original."""
    return pa.schema(
        [
            ("source_index", pa.uint32()),
            ("line", pa.uint64()),
            ("reason", pa.string()),
            ("duplicate_of_source_index", pa.int64()),
            ("duplicate_of_line", pa.int64()),
        ]
    )


@dataclass
class InputFileInfo:
    """One input file (after expanding folders and globs)."""

    path: str
    role: str  # "train" (split by eval_fraction when no eval input) or "eval" (from --eval)
    num_bytes: int
    sha256: str


@dataclass
class TokenizerInfo:
    """Identity of the tokenizer the shards were made with."""

    name_or_path: str
    class_name: str
    vocab_size: int  # len(tokenizer): every id in the shards is below it
    separator_token: str
    separator_id: int
    control_token_ids: list[int]  # special/added control tokens that must never appear inside a document
    fingerprint: str  # schemas.tokenizer.tokenizer_fingerprint: sha256 of the token -> id map
    files_sha256: Optional[str] = None  # sha256 over the tokenizer files, when loaded from a folder


@dataclass
class TokenizationInfo:
    """How the ids were made. They are the same whichever backend ran; this records the evidence."""

    requested: str  # data.tokenizer_backend: auto | hf | fast
    backend: str  # what encoded: hf (HF tokenizers) or fast (tiktoken, proven exact by the certificate)
    certificate: Optional[dict[str, Any]]  # pipeline.tokenize.certificate.Certificate.summary(); None when hf was requested
    crosscheck_documents: int  # documents re-encoded with HF tokenizers and compared (0 with hf)
    reference_documents: int  # documents the fast backend left to HF tokenizers (Unicode guard, suspect tokens)


@dataclass
class ShardInfo:
    """One Arrow shard file."""

    path: str  # relative POSIX path inside the manifest's folder
    num_documents: int
    num_tokens: int  # separators included
    num_bytes: int
    sha256: str


@dataclass
class SplitInfo:
    """A split (`train` or `eval`): its totals and shards."""

    num_documents: int
    num_tokens: int
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Accounting:
    """One outcome per input record: kept (per split) or dropped (per reason)."""

    num_records: int
    kept: dict[str, int]
    dropped: dict[str, int]

    def problems(self) -> list[str]:
        """Reasons the accounting does not add up (empty when it does)."""
        out = []
        total = sum(self.kept.values()) + sum(self.dropped.values())
        if total != self.num_records:
            out.append(f"records in ({self.num_records}) != kept ({sum(self.kept.values())}) + dropped ({sum(self.dropped.values())})")
        unknown = sorted(set(self.dropped) - set(DROP_REASONS))
        if unknown:
            out.append(f"unknown drop reasons {unknown}")
        if any(v < 0 for v in [*self.kept.values(), *self.dropped.values()]):
            out.append("negative counts")
        return out


@dataclass
class FileInfo:
    """An auxiliary file listed in the manifest (e.g. the drop log)."""

    path: str
    num_rows: int
    num_bytes: int
    sha256: str


@dataclass
class Manifest:
    """The whole manifest. `config` is the resolved `data` section (schemas.config.DataConfig)."""

    tool_version: str
    created_at: str  # ISO 8601 UTC; the only field allowed to differ between identical builds
    inputs: list[InputFileInfo]
    config: dict[str, Any]
    dedup: dict[str, Any]  # method and parameters actually used (shingles, hash, permutations, seed)
    tokenizer: TokenizerInfo
    token_dtype: str
    splits: dict[str, SplitInfo]
    accounting: Accounting
    drop_log: Optional[FileInfo] = None
    tokenization: Optional[TokenizationInfo] = None  # absent in manifests written before the backend choice
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # schema_version first, for humans and for `head manifest.json`.
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(raw, dict):
            raise ManifestError(f"{source} is not a manifest (expected a JSON object); rebuild it with `cpt-prep build`")
        version = raw.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ManifestError(
                f"{source} has schema_version {version!r}, this tool reads {list(SUPPORTED_SCHEMA_VERSIONS)}; "
                "rebuild the shards with this version's `cpt-prep build` or install the matching toolkit version"
            )
        try:
            manifest = cls(
                schema_version=version,
                tool_version=raw["tool_version"],
                created_at=raw["created_at"],
                inputs=[InputFileInfo(**x) for x in raw["inputs"]],
                config=dict(raw["config"]),
                dedup=dict(raw["dedup"]),
                tokenizer=TokenizerInfo(**raw["tokenizer"]),
                token_dtype=raw["token_dtype"],
                splits={
                    name: SplitInfo(
                        num_documents=s["num_documents"],
                        num_tokens=s["num_tokens"],
                        shards=[ShardInfo(**sh) for sh in s["shards"]],
                    )
                    for name, s in raw["splits"].items()
                },
                accounting=Accounting(**raw["accounting"]),
                drop_log=FileInfo(**raw["drop_log"]) if raw.get("drop_log") else None,
                tokenization=TokenizationInfo(**raw["tokenization"]) if raw.get("tokenization") else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{source} is malformed ({exc.__class__.__name__}: {exc}); rebuild it with `cpt-prep build`") from None
        unknown_splits = sorted(set(manifest.splits) - set(SPLITS))
        if unknown_splits:
            raise ManifestError(f"{source} has unknown splits {unknown_splits}; expected {list(SPLITS)}")
        if manifest.token_dtype not in ("uint16", "uint32"):
            raise ManifestError(f"{source} has token_dtype {manifest.token_dtype!r}; expected uint16 or uint32")
        for rel in [sh.path for s in manifest.splits.values() for sh in s.shards] + ([manifest.drop_log.path] if manifest.drop_log else []):
            check_relative_path(rel, source=source)
        return manifest

    def all_shards(self) -> Iterator[tuple[str, ShardInfo]]:
        """(split, shard) for every shard, train first."""
        for split in SPLITS:
            if split in self.splits:
                for shard in self.splits[split].shards:
                    yield split, shard


def check_relative_path(rel: str, *, source: str = MANIFEST_NAME) -> None:
    """Refuse absolute paths and paths that leave the manifest's folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or not rel:
        raise ManifestError(f"{source} lists path {rel!r} outside its folder; shard paths must be relative and stay inside the manifest's folder")


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate `manifest.json` (schema version, structure, path safety). Shards unchecked."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":  # the data set's folder (existing or not)
        path = path / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}; build the data set with `cpt-prep build INPUT --output {path.parent}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path} ({exc.__class__.__name__}); check the path and its permissions") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON (line {exc.lineno}: {exc.msg}); rebuild it with `cpt-prep build`") from None
    return Manifest.from_dict(raw, source=str(path))


def write_manifest(manifest: Manifest, folder: str | Path) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, fsync, rename). Call it last."""
    folder = Path(folder)
    final = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    data = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def resolve_path(folder: str | Path, rel: str) -> Path:
    """Absolute path of a manifest-relative file, refusing paths that escape `folder`."""
    check_relative_path(rel)
    folder = Path(folder).resolve()
    full = (folder / rel).resolve()
    if folder != full and folder not in full.parents:
        raise ManifestError(f"path {rel!r} resolves outside {folder} (a symlink?); keep shards inside the manifest's folder")
    return full


def open_shard(path: str | Path) -> pa.Table:
    """Open a shard memory-mapped (zero-copy), as `datasets.Dataset.from_file` does."""
    try:
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"shard {path} is not a readable Arrow stream ({exc.__class__.__name__}); rebuild or restore it") from None
