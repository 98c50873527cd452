"""Readers: every format and compression, folders and globs, and the byte-level edge cases
(invalid UTF-8, NUL, BOM, CRLF, blank lines) as defined, counted outcomes."""

from __future__ import annotations

import gzip
import hashlib
import json
import random

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


def test_a_fifo_or_other_non_regular_input_is_refused_before_any_read(tmp_path):
    import os

    fifo = tmp_path / "stream.txt"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears
    with pytest.raises(InputError) as info:
        expand_inputs([str(fifo)], role="train")
    assert "FIFO" in str(info.value) and str(fifo) in str(info.value) and "\n" not in str(info.value)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("a real file\n")
    os.mkfifo(folder / "b.txt")
    with pytest.raises(InputError, match="FIFO"):
        expand_inputs([str(folder)], role="train")  # inside a folder too: never skipped silently
    device = tmp_path / "device.txt"
    device.symlink_to("/dev/zero")  # endless: reading it would never finish
    with pytest.raises(InputError, match="is a device"):
        expand_inputs([str(device)], role="train")


def test_binary_fraction_counts_control_bytes_and_invalid_utf8():
    from pipeline.read import binary_fraction

    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(65536))
    assert binary_fraction(noise) > 0.4
    assert binary_fraction("Plain English.\tWith tabs\r\n中文句子，没有空格。\n".encode() * 100) == 0.0
    assert binary_fraction("中文".encode()[:-1]) == 0.0  # a character cut by the sniff window is not counted
    assert binary_fraction(b"caf\xe9 au lait, cr\xe8me br\xfbl\xe9e " * 10) < 0.15  # Latin-1 text: a few bad bytes


def test_check_inputs_refuses_binary_and_a_missing_text_field(tmp_path):
    from pipeline.read import check_inputs

    rng = random.Random(1)
    binary = tmp_path / "image.txt"
    binary.write_bytes(bytes(rng.randrange(256) for _ in range(200_000)))
    files = expand_inputs([str(binary)], role="train")
    with pytest.raises(InputError) as info:
        check_inputs(files, text_field="text", max_binary_fraction=0.3)
    message = str(info.value)
    assert str(binary) in message and "--max_binary_fraction 1" in message and "does not look like text" in message, message
    check_inputs(files, text_field="text", max_binary_fraction=1.0)  # allowed on request
    gz = tmp_path / "image.txt.gz"
    gz.write_bytes(gzip.compress(binary.read_bytes()))
    with pytest.raises(InputError, match="does not look like text"):  # judged on the decompressed bytes
        check_inputs(expand_inputs([str(gz)], role="train"), text_field="text", max_binary_fraction=0.3)

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n" + json.dumps({"content": "a document", "id": 1}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(InputError) as info:
        check_inputs(expand_inputs([str(jsonl)], role="train"), text_field="text", max_binary_fraction=0.3)
    assert "first record of" in str(info.value) and "'content'" in str(info.value) and "--text_field" in str(info.value)
    check_inputs(expand_inputs([str(jsonl)], role="train"), text_field="content", max_binary_fraction=0.3)
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), parquet)
    with pytest.raises(InputError, match="no column 'text'"):
        check_inputs(expand_inputs([str(parquet)], role="train"), text_field="text", max_binary_fraction=0.3)


def test_read_back_returns_the_records_at_given_lines(tmp_path):
    from pipeline.read import read_back

    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(TXT_BYTES))
    texts = read_back(path, {1, 3, 5}, expected_bytes=path.stat().st_size)
    assert texts == {1: "First line after a BOM", 3: "bad \ufffd\ufffd utf8", 5: "中文句子，没有空格。"}
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\nnot json\n" + json.dumps({"text": "three"}) + "\n")
    assert read_back(jsonl, {2, 3}) == {2: "not json", 3: "three"}  # an invalid record shows as its raw line
    with pytest.raises(InputError, match="changed"):
        read_back(jsonl, {1}, expected_bytes=jsonl.stat().st_size + 1)
