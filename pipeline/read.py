"""Input discovery and streaming record reading for `cpt-prep build`.

Formats: `.txt` (one document per line, the original tool's format), `.jsonl` (one JSON object per
line, text in `data.text_field`), `.parquet` (column `data.text_field`, read in batches of
`PARQUET_BATCH_ROWS` rows); `.txt`/`.jsonl` may be `.gz` or `.zst` compressed. Folders are walked
recursively in sorted order (hidden entries and files of other formats skipped, with a warning);
globs are expanded in sorted order.

Invariants:
- Streaming: memory is one read buffer (`READ_BUFFER_BYTES`) plus one record, whatever the size.
- Records are bytes until `decode_record`; every record is `(source_index, line, payload)` with
  `line` 1-based (the line of a .txt/.jsonl file, the row of a .parquet file), so each one can be
  accounted for and traced back. Lines end at `\\n` only (never at `\\r`, U+2028 or U+0085).
- A UTF-8 BOM at the start of a file and the `\\r` of a CRLF line end are stripped (and counted in
  `ReadStats`); blank lines are records (they end up dropped as `empty`).
- `decode_record` never raises on bad data: invalid UTF-8 or a NUL byte -> `invalid_utf8`; a
  .jsonl line that is not a JSON object with a string field -> `invalid_record`; null text -> "".
- Only regular files are inputs: a FIFO, socket or device is refused when the inputs are expanded
  (opening a FIFO would block until a writer appears, i.e. forever).
- `check_inputs` runs before any work, on the first `SNIFF_BYTES` of each input: a .txt/.jsonl whose
  share of non-text bytes (NUL and C0 control bytes other than tab, LF, VT, FF, CR and ESC; DEL;
  invalid UTF-8)
  exceeds `data.max_binary_fraction` is refused (a binary file renamed .txt would otherwise build,
  its lines dropped as invalid_utf8 or kept as garbage documents), and the first record of each
  .jsonl/.parquet input must hold `data.text_field`.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from schemas.errors import InputError
from schemas.manifest import InputFileInfo

logger = logging.getLogger(__name__)

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
READ_BUFFER_BYTES = 1 << 20  # 1 MiB reads: few syscalls, bounded memory
PARQUET_BATCH_ROWS = 1024  # rows per parquet batch (memory ~ 1024 documents)
BOM = b"\xef\xbb\xbf"
_GLOB_CHARS = "*?["
_HASH_CHUNK_BYTES = 8 * 2**20
SNIFF_BYTES = 64 * 1024  # decoded bytes of each input that decide whether it is text
# Bytes that never occur in text: C0 controls other than tab, LF, VT, FF, CR (and ESC, which
# terminal logs carry), plus DEL.
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)) + b"\x7f"

Payload = Union[bytes, None]
RawRecord = tuple[int, int, Payload]  # (source_index, line, payload)


@dataclass(frozen=True)
class InputFile:
    """One input file after expanding folders and globs."""

    path: Path
    fmt: str  # txt | jsonl | parquet
    compression: Optional[str]  # None | gzip | zstd
    role: str  # train | eval


@dataclass
class ReadStats:
    """Byte-level normalizations applied while reading (reported in the build summary)."""

    num_bom_stripped: int = 0
    num_crlf_stripped: int = 0
    bytes_read: int = 0  # on-disk bytes consumed so far (compressed size for .gz/.zst)
    per_file_records: list[int] = field(default_factory=list)


def detect_format(path: Path) -> tuple[str, Optional[str]]:
    """(format, compression) from the file name; InputError for anything unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = COMPRESSIONS[suffixes[-1]]
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(
            f"input {path} has an unknown format; use .txt (one document per line), .jsonl or .parquet, "
            "optionally compressed as .gz or .zst (rename the file if its content is one of these)"
        )
    if fmt == "parquet" and compression:
        raise InputError(f"input {path} is a compressed parquet file; parquet compresses internally, decompress it to .parquet")
    return fmt, compression


def expand_inputs(specs: Sequence[str], *, role: str) -> list[InputFile]:
    """Files named by `specs` (files, folders, globs), in the given order, each folder/glob sorted."""
    files: list[InputFile] = []
    for spec in specs:
        path = Path(spec)
        if any(c in spec for c in _GLOB_CHARS) and not path.exists():
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise InputError(f"input pattern {spec!r} matches no file; check the pattern (quote it so the shell does not expand it)")
            for match in matches:
                m = Path(match)
                files.extend(_folder_files(m, role=role) if m.is_dir() else [_input_file(m, role=role)])
        elif path.is_dir():
            found = _folder_files(path, role=role)
            if not found:
                raise InputError(f"input folder {path} holds no .txt, .jsonl or .parquet file (plain, .gz or .zst); check the path")
            files.extend(found)
        elif path.exists():
            files.append(_input_file(path, role=role))
        else:
            raise InputError(f"input not found: {spec}; check the path (a file, a folder or a quoted glob)")
    return files


def _input_file(path: Path, *, role: str) -> InputFile:
    fmt, compression = detect_format(path)
    _check_regular(path)
    return InputFile(path=path, fmt=fmt, compression=compression, role=role)


def _check_regular(path: Path) -> None:
    """Refuse a FIFO, socket or device: reading one blocks or never ends."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InputError(f"cannot read input {path} ({exc.strerror or exc.__class__.__name__}); check the file and its permissions") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device" if (
            stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "not a regular file"
        raise InputError(f"input {path} is {kind}, not a regular file; write the stream to a file first (e.g. `cat {path} > corpus.txt`) and pass that file")


def _folder_files(folder: Path, *, role: str) -> list[InputFile]:
    found, skipped = [], []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                detect_format(path)
            except InputError:
                skipped.append(path)
                continue
            found.append(_input_file(path, role=role))
    if skipped:
        logger.warning("skipped %d file(s) of unknown format in %s (e.g. %s)", len(skipped), folder, skipped[0])
    return found


def check_distinct(files: Sequence[InputFile]) -> None:
    """Refuse a file listed twice, in particular the same file as train and eval input."""
    seen: dict[tuple[int, int], InputFile] = {}
    for f in files:
        st = f.path.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            first = seen[key]
            if first.role != f.role:
                raise InputError(f"{f.path} is both a training and an eval input; give a different file to --eval (or use --eval_fraction)")
            raise InputError(f"input {f.path} is listed twice (also as {first.path}); list each file once")
        seen[key] = f


def describe_file(f: InputFile) -> InputFileInfo:
    """Bytes and sha256 of an input file (read once, in 8 MiB chunks); InputError if unreadable."""
    h = hashlib.sha256()
    num_bytes = 0
    try:
        with open(f.path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK_BYTES):
                h.update(chunk)
                num_bytes += len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read input {f.path} ({exc.strerror or exc.__class__.__name__}); check the file and its permissions") from None
    return InputFileInfo(path=f.path.as_posix(), role=f.role, num_bytes=num_bytes, sha256=h.hexdigest())


def binary_fraction(data: bytes) -> float:
    """Share of `data` that is not text: control bytes (`_CONTROL`) plus invalid UTF-8 sequences.

    A character cut by the end of `data` is not counted (the decoder keeps it pending)."""
    if not data:
        return 0.0
    bad = sum(data.count(b) for b in _CONTROL)
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)
    bad += text.count("\ufffd") - data.count("\ufffd".encode())  # a real U+FFFD in the text is text
    return min(bad / len(data), 1.0)


def _sniff(f: InputFile) -> bytes:
    """The first SNIFF_BYTES decoded bytes of a .txt/.jsonl input."""
    with _open_lines(f, lambda n: None) as fh:
        return fh.read(SNIFF_BYTES)


def check_inputs(files: Sequence[InputFile], *, text_field: str, max_binary_fraction: float) -> None:
    """Refuse, before any work, an input that is mostly not text or whose first record lacks
    `text_field` (see the module docstring); InputError naming the file and the setting."""
    for f in files:
        if f.fmt == "parquet":
            _parquet_text_column(f, text_field)
            continue
        try:
            head = _sniff(f)
        except Exception as exc:
            error = _read_error(f, exc)
            if error is None:
                raise
            raise error from None
        share = binary_fraction(head)
        if share > max_binary_fraction:
            raise InputError(
                f"input {f.path} does not look like text: {share:.0%} of its first {len(head) // 1024 or 1} KB are NUL, control bytes or "
                f"invalid UTF-8 (data.max_binary_fraction={max_binary_fraction:g}); remove it, convert it to UTF-8 (e.g. iconv), "
                "or set --max_binary_fraction 1 to build it anyway"
            )
        if f.fmt == "jsonl":
            _check_first_json_record(f, head, text_field)


def _check_first_json_record(f: InputFile, head: bytes, text_field: str) -> None:
    for raw in head.split(b"\n")[:-1] if b"\n" in head else [head]:
        line = raw.lstrip(BOM).strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return  # not JSON: counted as invalid_record by the build, refused there if every line is
        if isinstance(obj, dict) and text_field not in obj:
            fields = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise InputError(f"the first record of {f.path} has no field {text_field!r} (its fields: {fields}); "
                             "set --text_field to the field that holds the text")
        return


def _parquet_text_column(f: InputFile, text_field: str):
    """The parquet file of `f`, with `text_field` checked to be a text column; InputError otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(f.path))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read input {f.path}: {_describe_read_error(exc)}; check that the file is complete and of the format its name says") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise InputError(f"parquet input {f.path} has no column {text_field!r} (columns: {', '.join(names[:10])}); set --text_field to the text column")
    col_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type) or pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type)):
        raise InputError(f"parquet column {text_field!r} in {f.path} has type {col_type}, not text; set --text_field to a string column")
    return pf


class _CountingFile(io.RawIOBase):
    """A raw file that reports every byte read (progress over on-disk bytes, compressed included)."""

    def __init__(self, fh, on_bytes: Callable[[int], None]) -> None:
        self._fh = fh
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self._on_bytes(n)
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_lines(f: InputFile, on_bytes: Callable[[int], None]) -> io.BufferedIOBase:
    raw = _CountingFile(open(f.path, "rb", buffering=0), on_bytes)
    if f.compression == "gzip":
        return io.BufferedReader(gzip.GzipFile(fileobj=io.BufferedReader(raw, READ_BUFFER_BYTES), mode="rb"), READ_BUFFER_BYTES)
    if f.compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw, READ_BUFFER_BYTES), read_across_frames=True)
        return io.BufferedReader(reader, READ_BUFFER_BYTES)
    return io.BufferedReader(raw, READ_BUFFER_BYTES)


def _line_records(f: InputFile, source_index: int, stats: ReadStats, on_bytes: Callable[[int], None]) -> Iterator[RawRecord]:
    line_no = 0
    with _open_lines(f, on_bytes) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.endswith(b"\n"):
                raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                    stats.num_crlf_stripped += 1
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
                stats.num_bom_stripped += 1
            yield source_index, line_no, raw
    stats.per_file_records.append(line_no)


def _parquet_records(f: InputFile, source_index: int, text_field: str, stats: ReadStats, on_bytes: Callable[[int], None]) -> Iterator[RawRecord]:
    import pyarrow as pa

    pf = _parquet_text_column(f, text_field)
    file_bytes = f.path.stat().st_size
    total_rows = max(pf.metadata.num_rows, 1)
    reported = 0
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        # Cast to binary so that invalid UTF-8 reaches decode_record (and is counted) instead of raising here.
        for value in batch.column(0).cast(pa.large_binary()).to_pylist():
            row += 1
            yield source_index, row, value
        done = file_bytes * row // total_rows
        on_bytes(done - reported)
        reported = done
    on_bytes(file_bytes - reported)
    stats.per_file_records.append(row)


def iter_raw_records(
    files: Sequence[InputFile],
    *,
    text_field: str = "text",
    stats: Optional[ReadStats] = None,
    on_bytes: Optional[Callable[[int], None]] = None,
) -> Iterator[RawRecord]:
    """Every record of every file, in order, as `(source_index, line, payload)` (payload undecoded).

    `on_bytes(n)` is called as on-disk bytes are consumed (for a progress bar)."""
    stats = stats if stats is not None else ReadStats()

    def count(n: int) -> None:
        stats.bytes_read += n
        if on_bytes is not None:
            on_bytes(n)

    for source_index, f in enumerate(files):
        try:
            if f.fmt == "parquet":
                yield from _parquet_records(f, source_index, text_field, stats, count)
            else:
                yield from _line_records(f, source_index, stats, count)
        except InputError:
            raise
        except Exception as exc:
            error = _read_error(f, exc)
            if error is None:
                raise
            raise error from None


def _read_error(f: InputFile, exc: Exception) -> Optional[InputError]:
    """The one-line error for a read of `f` that failed on corrupt or truncated data, else None."""
    # zstandard.ZstdError, pyarrow.ArrowInvalid: corrupt data; OSError, EOFError, zlib.error: truncated gzip and the like.
    if isinstance(exc, (OSError, EOFError, zlib.error, ValueError)) or type(exc).__module__.split(".")[0] in ("zstandard", "pyarrow", "zstd"):
        return InputError(f"cannot read input {f.path}: {_describe_read_error(exc)}; check that the file is complete and of the format its name says")
    return None


def _describe_read_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}"[:200] if text else exc.__class__.__name__


def decode_record(payload: Payload, fmt: str, text_field: str) -> tuple[Optional[str], Optional[str]]:
    """`(text, None)` for a usable record, `(None, reason)` for `invalid_utf8` / `invalid_record`."""
    if payload is None:  # parquet null
        return "", None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if fmt == "jsonl":
        if not text.strip():
            return "", None
        try:
            obj = json.loads(text)
        except ValueError:
            return None, "invalid_record"
        if not isinstance(obj, dict) or text_field not in obj:
            return None, "invalid_record"
        value = obj[text_field]
        if value is None:
            return "", None
        if not isinstance(value, str):
            return None, "invalid_record"
        text = value
        try:  # JSON escapes can spell lone surrogates, which are not encodable text
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None, "invalid_utf8"
    if "\x00" in text:
        return None, "invalid_utf8"
    return text, None


def read_documents(files: Sequence[InputFile], *, text_field: str = "text") -> Iterator[tuple[int, int, Optional[str], Optional[str]]]:
    """`(source_index, line, text, invalid_reason)` for every record: the decoded form of
    `iter_raw_records` (single process; the build decodes in its workers instead)."""
    for source_index, line, payload in iter_raw_records(files, text_field=text_field):
        text, reason = decode_record(payload, files[source_index].fmt, text_field)
        yield source_index, line, text, reason


def read_back(path: Path, lines: set[int], *, text_field: str = "text", expected_bytes: Optional[int] = None,
              max_bytes: Optional[int] = None) -> dict[int, str]:
    """The text of the records at `lines` (1-based line or row numbers) of one input, for showing
    what a build dropped: the decoded text, or for a record that does not decode (invalid_utf8,
    invalid_record) the raw line with invalid bytes replaced by U+FFFD. Reads the file once, up
    to the last wanted line. InputError when the file is missing, unreadable, or no longer
    `expected_bytes` long (changed since the build: its line numbers no longer say which record).
    With `max_bytes`, reading stops after that many on-disk bytes (later lines are left out)."""
    fmt, compression = detect_format(path)
    _check_regular(path)
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise InputError(f"input {path} has {size:,} bytes, not the {expected_bytes:,} it had when the data set was built; "
                         "it changed, so its line numbers no longer point at the dropped records")
    f = InputFile(path=path, fmt=fmt, compression=compression, role="train")
    found: dict[int, str] = {}
    last = max(lines, default=0)
    stats = ReadStats()
    for _, line, payload in iter_raw_records([f], text_field=text_field, stats=stats):
        if max_bytes is not None and stats.bytes_read > max_bytes:
            break
        if line in lines:
            text, reason = decode_record(payload, fmt, text_field)
            found[line] = text if reason is None else (payload or b"").decode("utf-8", errors="replace")
        if line >= last:
            break
    return found
