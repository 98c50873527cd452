"""Normalization for hashing (pipeline.normalize): what counts as "the same text"."""

from __future__ import annotations

import unicodedata

import pytest

from pipeline.normalize import (
    exact_key,
    exact_keys,
    normalize_batch,
    normalize_for_hash,
)
from tests.conftest import DATA_DIR

SAMPLE = DATA_DIR / "sample" / "train.txt"


def _reference(text: str) -> str:
    """The definition in plain Python (agrees with the vectorized code except for rare orderings of
    combining marks next to removed punctuation, which the sample does not contain)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif not (cat[0] == "P" or cat in ("Cc", "Cf") or ch in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"):
            kept.append(ch)
    return " ".join("".join(kept).split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello,  World!", "hello world"),
        ("ＨＥＬＬＯ\u3000ｗｏｒｌｄ！", "hello world"),  # full-width letters, ideographic space, full-width "!"
        ("  你好，世界！  ", "你好世界"),  # CJK punctuation removed, Han untouched
        ("「日本語」のテキスト。", "日本語のテキスト"),
        ("한국어 텍스트입니다.", "한국어 텍스트입니다"),
        ("Café vs Cafe\u0301", "café vs café"),  # composed and decomposed accents agree
        ("Straße ﬁne ①", "strasse fine 1"),  # casefold expands ß; NFKC ligature and circled digit
        ("a\u200bb\x00c\ufeffd", "abcd"),  # zero-width space, NUL, BOM removed
        ("tab\there\r\nnew\nline", "tab here new line"),
        ("好评😀", "好评😀"),  # emoji kept
        ("", ""),
        (" \t\u3000 ", ""),
        ("what…", "what"),  # an ellipsis expands to punctuation only
    ],
)
def test_normalize_for_hash(text, expected):
    assert normalize_for_hash(text) == expected


def test_exact_key_ignores_case_width_spacing_and_punctuation():
    base = "The quick brown fox, it jumps over the lazy dog."
    variants = [
        base.upper(),
        "  The quick  brown fox it jumps\tover the lazy dog ",
        "The quick brown fox it jumps over the lazy dog",
        "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in base),  # full-width
    ]
    assert {exact_key(v) for v in variants} == {exact_key(base)}
    assert exact_key(base.replace("lazy", "busy")) != exact_key(base)
    assert exact_key("你好，世界") == exact_key("你好世界！") != exact_key("你好世间")


def test_exact_key_is_stable_across_versions_and_processes():
    # Manifests record dedup parameters; a silent change of the key would change build outputs.
    assert exact_key("Hello, World!") == 4411527225140466328
    assert exact_key("") == exact_key("  ") == 3244421341483603138


def test_batch_equals_single_and_reference_on_the_sample():
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    batch = normalize_batch(lines)
    assert len(batch) == len(lines)
    texts = [batch.text(i) for i in range(len(lines))]
    assert texts == [_reference(line) for line in lines]
    assert texts[:300] == [normalize_for_hash(line) for line in lines[:300]]
    keys = exact_keys(lines)
    assert keys[:300].tolist() == [exact_key(line) for line in lines[:300]]
    assert all(" " not in (t[:1] + t[-1:]) and "  " not in t for t in texts)


def test_slow_path_documents_do_not_disturb_their_neighbours():
    texts = ["plain one", "Cafe\u0301, ﬁne", "", "plain two", "x\u0301" * 3, "end"]
    batch = normalize_batch(texts)
    assert [batch.text(i) for i in range(len(texts))] == [normalize_for_hash(t) for t in texts]
    assert batch.text(0) == "plain one" and batch.text(3) == "plain two" and batch.text(5) == "end"


def test_broken_unicode_never_crashes():
    # Lone surrogates (surrogateescape'd bytes, JSON "\ud800" escapes) get a defined result.
    texts = ["a\ud800b", "x\udc80y", "ok"]
    batch = normalize_batch(texts)
    assert [batch.text(i) for i in range(3)] == ["ab", "x\udc80y", "ok"]
    assert isinstance(exact_key("a\ud800b"), int)
