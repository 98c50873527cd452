"""Readers: every format and compression, folders and globs, and the byte-level edge cases
(invalid UTF-8, NUL, BOM, CRLF, blank lines) as defined, counted outcomes."""

from __future__ import annotations

import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.read import (
    READ_BUFFER_BYTES,
    ReadStats,
    check_distinct,
    decode_record,
    describe_file,
    expand_inputs,
    iter_raw_records,
    read_documents,
)
from schemas.errors import InputError

TXT_BYTES = b"".join(
    [
        b"\xef\xbb\xbfFirst line after a BOM\r\n",  # BOM stripped, CRLF stripped
        b"\n",  # blank line: a record of its own
        b"bad \xff\xfe utf8\n",  # invalid UTF-8
        b"nul \x00 byte\n",
        "中文句子，没有空格。\n".encode(),
        b"keeps a lone \r inside\n",
        "unicode line sep \u2028 stays inside\n".encode(),
        b"last line without newline",
    ]
)


def records(files, **kw):
    return [(s, line, text, reason) for s, line, text, reason in read_documents(files, **kw)]


def test_txt_edge_cases_are_defined_outcomes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(TXT_BYTES)
    files = expand_inputs([str(path)], role="train")
    stats = ReadStats()
    raw = list(iter_raw_records(files, stats=stats))
    assert [line for _, line, _ in raw] == list(range(1, 9))
    assert stats.num_bom_stripped == 1 and stats.num_crlf_stripped == 1
    assert stats.bytes_read == len(TXT_BYTES)
    got = records(files)
    assert got[0] == (0, 1, "First line after a BOM", None)
    assert got[1] == (0, 2, "", None)
    assert got[2][2:] == (None, "invalid_utf8")
    assert got[3][2:] == (None, "invalid_utf8")
    assert got[4][2] == "中文句子，没有空格。"
    assert got[5][2] == "keeps a lone \r inside"
    assert got[6][2] == "unicode line sep \u2028 stays inside"
    assert got[7] == (0, 8, "last line without newline", None)


def test_empty_file_has_no_records_and_trailing_blank_line_is_one(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank_end.txt").write_bytes(b"a\n\n")
    assert records(expand_inputs([str(tmp_path / "empty.txt")], role="train")) == []
    assert [r[2] for r in records(expand_inputs([str(tmp_path / "blank_end.txt")], role="train"))] == ["a", ""]


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_compressed_txt_gives_the_same_records(tmp_path, suffix):
    plain = tmp_path / "a.txt"
    plain.write_bytes(TXT_BYTES)
    path = tmp_path / f"b.txt{suffix}"
    if suffix == ".gz":
        path.write_bytes(gzip.compress(TXT_BYTES))
    elif suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(TXT_BYTES))
    else:
        path.write_bytes(TXT_BYTES)
    stats = ReadStats()
    got = list(iter_raw_records(expand_inputs([str(path)], role="train"), stats=stats))
    want = list(iter_raw_records(expand_inputs([str(plain)], role="train")))
    assert got == want
    assert stats.bytes_read == path.stat().st_size  # progress counts on-disk (compressed) bytes


def test_jsonl_fields_and_bad_records(tmp_path):
    lines = [
        json.dumps({"text": "hello world", "id": 1}),
        json.dumps({"content": "other field"}),  # missing field
        "{not json",
        json.dumps({"text": 42}),  # not a string
        json.dumps({"text": None}),  # null text counts as empty
        "",  # blank line
        '{"text": "lone surrogate \\ud800"}',
        '{"text": "escaped nul \\u0000"}',
        json.dumps(["a list"]),
        json.dumps({"text": "中文 and English"}, ensure_ascii=False),
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = [(text, reason) for _, _, text, reason in records(expand_inputs([str(path)], role="train"))]
    assert got == [
        ("hello world", None),
        (None, "invalid_record"),
        (None, "invalid_record"),
        (None, "invalid_record"),
        ("", None),
        ("", None),
        (None, "invalid_utf8"),
        (None, "invalid_utf8"),
        (None, "invalid_record"),
        ("中文 and English", None),
    ]
    other = [(text, reason) for _, _, text, reason in records(expand_inputs([str(path)], role="train"), text_field="content")]
    assert other[1] == ("other field", None) and other[0] == (None, "invalid_record")


def test_jsonl_gz_and_zst(tmp_path):
    body = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(50)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    for name in ("a.jsonl.gz", "b.jsonl.zst"):
        texts = [t for _, _, t, _ in records(expand_inputs([str(tmp_path / name)], role="train"))]
        assert texts == [f"document number {i}" for i in range(50)]


def test_parquet_row_groups_nulls_and_invalid_bytes(tmp_path):
    texts = [f"row {i} text" for i in range(2500)]
    texts[5] = None
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": texts, "n": list(range(2500))}), path, row_group_size=700)
    got = records(expand_inputs([str(path)], role="train"), text_field="body")
    assert len(got) == 2500
    assert got[0] == (0, 1, "row 0 text", None)
    assert got[5] == (0, 6, "", None)
    assert got[-1] == (0, 2500, "row 2499 text", None)

    binary = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok text", b"bad \xff", b"nul \x00"], pa.binary())}), binary)
    assert [r[3] for r in records(expand_inputs([str(binary)], role="train"))] == [None, "invalid_utf8", "invalid_utf8"]

    with pytest.raises(InputError, match="no column 'text'.*--text_field"):
        records(expand_inputs([str(path)], role="train"))
    with pytest.raises(InputError, match="not text"):
        records(expand_inputs([str(path)], role="train"), text_field="n")


def test_folders_recursive_sorted_and_globs(tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "b" / "2.txt").write_text("two\n")
    (root / "a.txt").write_text("one\n")
    (root / "b" / "1.jsonl").write_text('{"text": "three"}\n')
    (root / "README.md").write_text("not an input")
    (root / ".hidden" / "x.txt").write_text("hidden")
    files = expand_inputs([str(root)], role="train")
    assert [f.path.relative_to(root).as_posix() for f in files] == ["a.txt", "b/1.jsonl", "b/2.txt"]
    assert [t for *_, t, _ in records(files)] == ["one", "three", "two"]
    globbed = expand_inputs([str(root / "**" / "*.txt")], role="eval")
    assert [f.path.name for f in globbed] == ["a.txt", "2.txt"] and all(f.role == "eval" for f in globbed)


def test_input_errors_are_one_line(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "x.parquet.gz").write_bytes(b"")
    (tmp_path / "empty_dir").mkdir()
    cases = [
        (str(tmp_path / "missing.txt"), "input not found"),
        (str(tmp_path / "x.csv"), "unknown format"),
        (str(tmp_path / "x.parquet.gz"), "compressed parquet"),
        (str(tmp_path / "*.nothing"), "matches no file"),
        (str(tmp_path / "empty_dir"), "holds no .txt"),
    ]
    for spec, message in cases:
        with pytest.raises(InputError, match=message) as info:
            expand_inputs([spec], role="train")
        assert "\n" not in str(info.value)


def test_same_file_as_train_and_eval_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    with pytest.raises(InputError, match="both a training and an eval input"):
        check_distinct(expand_inputs([str(link)], role="eval") + expand_inputs([str(path)], role="train"))
    with pytest.raises(InputError, match="listed twice"):
        check_distinct(expand_inputs([str(path), str(path)], role="train"))


def test_corrupt_gzip_is_an_input_error(tmp_path):
    good = gzip.compress(b"line one\n" * 10000)
    path = tmp_path / "a.txt.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cannot read input .*a.txt.gz"):
        records(expand_inputs([str(path)], role="train"))


def test_describe_file_hashes_bytes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(TXT_BYTES)
    info = describe_file(expand_inputs([str(path)], role="eval")[0])
    assert info.num_bytes == len(TXT_BYTES) and info.role == "eval"
    assert info.sha256 == hashlib.sha256(TXT_BYTES).hexdigest()


def test_reading_is_streamed(tmp_path):
    """Taking the first record of a large file reads about one buffer, not the file."""
    path = tmp_path / "big.txt"
    line = b"x" * 99 + b"\n"
    path.write_bytes(line * (8 * READ_BUFFER_BYTES // len(line)))
    stats = ReadStats()
    it = iter_raw_records(expand_inputs([str(path)], role="train"), stats=stats)
    first = next(it)
    assert first == (0, 1, b"x" * 99)
    assert stats.bytes_read <= 2 * READ_BUFFER_BYTES < path.stat().st_size


def test_decode_record_plain_text_keeps_original():
    assert decode_record(b"  spaced  ", "txt", "text") == ("  spaced  ", None)
    assert decode_record(None, "parquet", "text") == ("", None)
