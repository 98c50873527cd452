"""What a build dropped, with the text: `cpt-prep dropped MANIFEST [--reason R] [--limit N]` and the
examples per reason in `cpt-prep check --report`.

The drop log (`drop_log.arrow`) holds, per dropped record, its input, line, reason and, for
duplicates, the kept original's input and line; never the text (it would double the corpus on disk).
The text is read back from the inputs the manifest lists (path as recorded, else relative to the
manifest's folder), and only when the file still has the size the manifest recorded: otherwise its
line numbers may point at other records, and the row says so instead of showing wrong text.

Cost: one streaming read of each input involved, up to the last line shown (`--limit` rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

from pipeline.read import read_back
from schemas.errors import ConfigError, InputError, ManifestError
from schemas.manifest import DROP_REASONS, MANIFEST_NAME, Manifest, read_manifest
from schemas.verify.dataset import read_drop_log

DEFAULT_LIMIT = 20
DEFAULT_WIDTH = 300  # characters of text shown per record in the text format


@dataclass
class DroppedRecord:
    """One dropped record with its text (None when it cannot be read back: `note` says why)."""

    reason: str
    input: str
    line: int
    text: Optional[str]
    kept_input: Optional[str] = None  # the original a duplicate was dropped against
    kept_line: Optional[int] = None
    kept_text: Optional[str] = None
    note: Optional[str] = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dropped` subcommand's arguments."""
    parser.add_argument("manifest", help="the data set's manifest.json (or its folder)")
    parser.add_argument("--reason", choices=DROP_REASONS, help="only records dropped for this reason")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N", help=f"records to print (default {DEFAULT_LIMIT}; 0 = all)")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, metavar="CHARS",
                        help=f"characters of text shown per record (default {DEFAULT_WIDTH}; 0 = all); --json prints it whole")
    parser.add_argument("--json", action="store_true", help="one JSON object per record (reason, input, line, text, kept_*, note)")


def _input_path(manifest: Manifest, folder: Path, index: int) -> Path:
    recorded = Path(manifest.inputs[index].path)
    if recorded.exists() or recorded.is_absolute():
        return recorded
    beside = folder / recorded  # a relative path, the data set moved with its inputs
    return beside if beside.exists() else recorded


def dropped_records(manifest: Manifest, folder: Path, *, reason: Optional[str] = None, limit: int = DEFAULT_LIMIT,
                    per_reason: Optional[int] = None, max_read_bytes: Optional[int] = None) -> list[DroppedRecord]:
    """The first dropped records of the drop log (in build order), their text and their kept
    original's text read back from the inputs. `per_reason` caps the records of each reason;
    `max_read_bytes` caps the bytes read of each input (records beyond have no text)."""
    if manifest.drop_log is None:
        raise ManifestError("the manifest lists no drop log (built without one); rebuild with `cpt-prep build` to see dropped records")
    table = read_drop_log(manifest, folder)
    if table is None:
        raise ManifestError(f"drop log {folder / manifest.drop_log.path} cannot be read; rebuild the data set with `cpt-prep build`")
    reasons = table.column("reason").to_pylist()
    sources = table.column("source_index").to_pylist()
    lines = table.column("line").to_pylist()
    has_origin = "duplicate_of_line" in table.column_names
    kept_sources = table.column("duplicate_of_source_index").to_pylist() if has_origin else [-1] * len(reasons)
    kept_lines = table.column("duplicate_of_line").to_pylist() if has_origin else [-1] * len(reasons)
    picked, counts = [], defaultdict(int)
    for i, r in enumerate(reasons):
        if (reason and r != reason) or (per_reason and counts[r] >= per_reason):
            continue
        counts[r] += 1
        picked.append(i)
        if limit and len(picked) >= limit:
            break
    wanted: dict[int, set[int]] = defaultdict(set)
    for i in picked:
        wanted[sources[i]].add(lines[i])
        if kept_lines[i] >= 0:
            wanted[kept_sources[i]].add(kept_lines[i])
    texts: dict[tuple[int, int], str] = {}
    problems: dict[int, str] = {}
    text_field = str(manifest.config.get("text_field", "text"))
    for index, want in sorted(wanted.items()):
        if not 0 <= index < len(manifest.inputs):
            problems[index] = f"input #{index} is not listed in the manifest"
            continue
        info = manifest.inputs[index]
        try:
            found = read_back(_input_path(manifest, folder, index), want, text_field=text_field, expected_bytes=info.num_bytes,
                              max_bytes=max_read_bytes)
        except (InputError, OSError) as exc:
            problems[index] = str(exc) if isinstance(exc, InputError) else f"cannot read {info.path} ({exc.strerror or exc.__class__.__name__})"
            continue
        texts.update({(index, line): text for line, text in found.items()})

    def name(index: int) -> str:
        return manifest.inputs[index].path if 0 <= index < len(manifest.inputs) else f"input #{index}"

    out = []
    for i in picked:
        src, line = sources[i], lines[i]
        record = DroppedRecord(reason=reasons[i], input=name(src), line=line, text=texts.get((src, line)), note=problems.get(src))
        if record.text is None and record.note is None:
            record.note = (f"not read back: beyond the first {max_read_bytes:,} bytes of the input; see `cpt-prep dropped --reason {record.reason}`"
                           if max_read_bytes else f"line {line} is not in {record.input}")
        if kept_lines[i] >= 0:
            record.kept_input, record.kept_line = name(kept_sources[i]), kept_lines[i]
            record.kept_text = texts.get((kept_sources[i], kept_lines[i]))
            record.note = record.note or problems.get(kept_sources[i])
        out.append(record)
    return out


def _shorten(text: Optional[str], width: int) -> str:
    if text is None:
        return "(text not available)"
    shown = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return shown if not width or len(shown) <= width else shown[: width - 3] + "..."


def write_records(records: Sequence[DroppedRecord], out: TextIO, *, width: int = DEFAULT_WIDTH, as_json: bool = False) -> None:
    """Print records, one block each (text) or one JSON object per line."""
    if as_json:
        for r in records:
            out.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        return
    for r in records:
        origin = f" (kept instead: {r.kept_input}:{r.kept_line})" if r.kept_line is not None else ""
        out.write(f"{r.reason}  {r.input}:{r.line}{origin}\n")
        out.write(f"    {_shorten(r.text, width)}\n")
        if r.kept_line is not None:
            out.write(f"    kept: {_shorten(r.kept_text, width)}\n")
        if r.note:
            out.write(f"    note: {r.note}\n")


def run(args: argparse.Namespace) -> int:
    """`cpt-prep dropped`; CptError (one line, exit 2) for an unusable manifest or flag."""
    if args.limit < 0 or args.width < 0:
        raise ConfigError(f"--limit {args.limit} / --width {args.width} is invalid: expected integers >= 0")
    path = Path(args.manifest)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest = read_manifest(path)
    records = dropped_records(manifest, path.parent, reason=args.reason, limit=args.limit)
    write_records(records, sys.stdout, width=args.width, as_json=args.json)
    if not records and not args.json:
        what = f"for reason {args.reason}" if args.reason else "at all"
        sys.stdout.write(f"no record was dropped {what} ({', '.join(f'{k} {v:,}' for k, v in manifest.accounting.dropped.items()) or 'nothing dropped'})\n")
    return 0
