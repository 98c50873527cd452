"""Filters: keep/drop with a reason; min_length counts characters after stripping."""

from __future__ import annotations

from pipeline.filters import FILTER_REASONS, filter_text
from schemas.manifest import DROP_REASONS


def test_empty_and_whitespace_only():
    for text in ("", "   ", "\t\r", "\u3000\u3000", "\u00a0"):
        assert filter_text(text, min_length=10) == "empty"


def test_min_length_boundary_in_characters():
    assert filter_text("123456789", min_length=10) == "too_short"
    assert filter_text("1234567890", min_length=10) is None
    assert filter_text("   123456789   ", min_length=10) == "too_short"  # stripped before counting


def test_chinese_is_measured_in_characters_not_bytes():
    nine = "今天天气很好我们去"  # 9 characters, 27 UTF-8 bytes
    assert len(nine.encode()) == 27
    assert filter_text(nine, min_length=10) == "too_short"
    assert filter_text(nine + "玩", min_length=10) is None


def test_min_length_zero_keeps_any_non_blank_text():
    assert filter_text("a", min_length=0) is None
    assert filter_text(" ", min_length=0) == "empty"


def test_reasons_belong_to_the_contract():
    assert set(FILTER_REASONS) <= set(DROP_REASONS)
