"""Per-document text measurements for `cpt-prep check`: Unicode script counts, U+FFFD counts, and the
published quality heuristics (Gopher, C4, FineWeb), each returning keep/fail with a reason.

- Scripts are assigned by Unicode block ranges (`SCRIPT_RANGES`), not by `unicodedata` per
  character, so one document costs one `searchsorted` over its code points. Only letters of a named
  script count; digits, punctuation, symbols, spaces, emoji and combining marks are neutral; any
  other code point above U+024F falls into `Other`. A block holds a few non-letters (Arabic digits,
  for instance): the shares are approximate to that extent.
- Word-based heuristics assume space-separated words. A document whose letters are at least
  `CJK_DOMINANT_SHARE` (50%) Han or Kana is "CJK-dominant": word counts, word lengths, stop words
  and word n-grams mean nothing there (a whole clause is one whitespace "word"), so those parts are
  skipped and the line-based parts run with CJK terminal punctuation (。！？) added.
- Words are whitespace tokens with leading/trailing punctuation stripped, an approximation of the
  NLTK `word_tokenize` that the reference implementations use (no NLTK dependency, no download).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# ------------------------------------------------------------------------------------------ scripts
NEUTRAL = "neutral"  # not a letter of any script (digits, punctuation, symbols, spaces, marks)
OTHER = "Other"
SCRIPTS = ("Latin", "Han", "Kana", "Hangul", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari",
           "Indic", "Thai", "Armenian", "Georgian", OTHER)
CJK_DOMINANT_SHARE = 0.5
CJK_SCRIPTS = ("Han", "Kana")

# (first, last code point inclusive, label). Sorted and checked for overlaps at import.
SCRIPT_RANGES = sorted([
    (0x0000, 0x0040, NEUTRAL), (0x0041, 0x005A, "Latin"), (0x005B, 0x0060, NEUTRAL), (0x0061, 0x007A, "Latin"),
    (0x007B, 0x00A9, NEUTRAL), (0x00AA, 0x00AA, "Latin"), (0x00AB, 0x00B9, NEUTRAL), (0x00BA, 0x00BA, "Latin"),
    (0x00BB, 0x00BF, NEUTRAL), (0x00C0, 0x00D6, "Latin"), (0x00D7, 0x00D7, NEUTRAL), (0x00D8, 0x00F6, "Latin"),
    (0x00F7, 0x00F7, NEUTRAL), (0x00F8, 0x024F, "Latin"), (0x0250, 0x02AF, "Latin"),  # IPA extensions
    (0x02B0, 0x036F, NEUTRAL),  # modifier letters, combining diacritics
    (0x0370, 0x03FF, "Greek"), (0x0400, 0x052F, "Cyrillic"), (0x0530, 0x058F, "Armenian"), (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"), (0x08A0, 0x08FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"), (0x0980, 0x0DFF, "Indic"), (0x0E00, 0x0E7F, "Thai"), (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"), (0x1AB0, 0x1AFF, NEUTRAL), (0x1C80, 0x1C8F, "Cyrillic"), (0x1DC0, 0x1DFF, NEUTRAL),
    (0x1E00, 0x1EFF, "Latin"), (0x1F00, 0x1FFF, "Greek"),
    (0x2000, 0x2BFF, NEUTRAL),  # punctuation, super/subscripts, currency, letterlike, arrows, math, box drawing
    (0x2C60, 0x2C7F, "Latin"), (0x2DE0, 0x2DFF, "Cyrillic"), (0x2E00, 0x2E7F, NEUTRAL), (0x2E80, 0x2FDF, "Han"),
    (0x3000, 0x3004, NEUTRAL), (0x3005, 0x3007, "Han"), (0x3008, 0x3020, NEUTRAL), (0x3021, 0x3029, "Han"),
    (0x302A, 0x3037, NEUTRAL), (0x3038, 0x303B, "Han"), (0x303C, 0x303F, NEUTRAL), (0x3040, 0x30FF, "Kana"),
    (0x3130, 0x318F, "Hangul"), (0x31F0, 0x31FF, "Kana"), (0x3200, 0x33FF, NEUTRAL), (0x3400, 0x4DBF, "Han"),
    (0x4DC0, 0x4DFF, NEUTRAL), (0x4E00, 0x9FFF, "Han"), (0xA640, 0xA69F, "Cyrillic"), (0xA720, 0xA7FF, "Latin"),
    (0xA960, 0xA97F, "Hangul"), (0xAC00, 0xD7FF, "Hangul"), (0xD800, 0xF8FF, NEUTRAL),  # surrogates, private use
    (0xF900, 0xFAFF, "Han"), (0xFB50, 0xFDFF, "Arabic"), (0xFE00, 0xFE6F, NEUTRAL), (0xFE70, 0xFEFF, "Arabic"),
    (0xFF00, 0xFF20, NEUTRAL), (0xFF21, 0xFF3A, "Latin"), (0xFF3B, 0xFF40, NEUTRAL), (0xFF41, 0xFF5A, "Latin"),
    (0xFF5B, 0xFF65, NEUTRAL), (0xFF66, 0xFF9F, "Kana"), (0xFFA0, 0xFFDC, "Hangul"), (0xFFDD, 0xFFFF, NEUTRAL),
    (0x1F000, 0x1FAFF, NEUTRAL),  # emoji, pictographs
    (0x20000, 0x323AF, "Han"), (0xE0000, 0x10FFFF, NEUTRAL),  # tags, variation selectors, private use planes
])
_LABELS = (*SCRIPTS, NEUTRAL)
_STARTS = np.array([r[0] for r in SCRIPT_RANGES], dtype=np.uint32)
_ENDS = np.array([r[1] for r in SCRIPT_RANGES], dtype=np.uint32)
_LABEL_IDS = np.array([_LABELS.index(r[2]) for r in SCRIPT_RANGES], dtype=np.int64)
_OTHER_ID = _LABELS.index(OTHER)
assert all(a[1] < b[0] for a, b in zip(SCRIPT_RANGES, SCRIPT_RANGES[1:])), "SCRIPT_RANGES overlap"


def code_points(text: str) -> np.ndarray:
    """The text's code points as a uint32 array (no Python loop)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def script_counts(text: str) -> dict[str, int]:
    """Letters per script (`SCRIPTS`); neutral characters are not counted."""
    cps = code_points(text)
    idx = np.searchsorted(_STARTS, cps, side="right") - 1
    labels = np.where(cps <= _ENDS[idx], _LABEL_IDS[idx], _OTHER_ID)
    counts = np.bincount(labels, minlength=len(_LABELS))
    return {name: int(counts[i]) for i, name in enumerate(SCRIPTS) if counts[i]}


def is_cjk_dominant(counts: dict[str, int]) -> bool:
    """At least half the letters are Han or Kana (text without spaces between words)."""
    letters = sum(counts.values())
    return letters > 0 and sum(counts.get(s, 0) for s in CJK_SCRIPTS) >= CJK_DOMINANT_SHARE * letters


# ------------------------------------------------------------------------------------------- words
_PUNCT = string.punctuation + "“”‘’«»…—–·、，。！？；：（）【】《》「」『』"
_CJK_TERMINAL = ("。", "！", "？", "」", "』", "”", "…")


def words_of(text: str) -> list[str]:
    """Whitespace tokens with surrounding punctuation stripped; all-punctuation tokens dropped."""
    return [w for w in (t.strip(_PUNCT) for t in text.split()) if w]


# ------------------------------------------------------------------------------------------ Gopher
@dataclass
class GopherQualityConfig:
    """Gopher quality filter, Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights
    from Training Gopher", arXiv:2112.11446, Appendix A.1.1); defaults are the paper's numbers, as in
    datatrove's GopherQualityFilter. A document fails when any part fails."""

    min_words: int = 50
    """Fewer words than this fails (paper: 50 to 100,000 words)."""
    max_words: int = 100_000
    """More words than this fails."""
    min_mean_word_length: float = 3.0
    """Mean word length below this (characters) fails (paper: 3 to 10)."""
    max_mean_word_length: float = 10.0
    """Mean word length above this fails."""
    max_symbol_word_ratio: float = 0.1
    """`#` per word, or ellipses (`...`, `…`) per word, above this fails (paper: 0.1)."""
    max_bullet_lines_fraction: float = 0.9
    """Lines starting with a bullet point (•) above this fraction fail (paper: 90%)."""
    max_ellipsis_lines_fraction: float = 0.3
    """Lines ending with an ellipsis above this fraction fail (paper: 30%)."""
    min_alpha_words_fraction: float = 0.8
    """Words holding at least one letter below this fraction fail (paper: 80%)."""
    min_stop_words: int = 2
    """Fewer of the stop words (the, be, to, of, and, that, have, with) than this fails (paper: 2)."""


GOPHER_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_BULLETS = ("•", "●")  # datatrove checks "•" only; "●" is the same symbol in CJK typesetting


def gopher_quality(text: str, cfg: GopherQualityConfig, *, cjk: bool) -> Optional[str]:
    """The first Gopher quality check the document fails, or None. Word parts skipped when `cjk`."""
    lines = text.splitlines() or [text]
    if sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_fraction:
        return "bullet_lines"
    if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > cfg.max_ellipsis_lines_fraction:
        return "ellipsis_lines"
    if cjk:
        return None
    words = words_of(text)
    n = len(words)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    mean_len = sum(len(w) for w in words) / n
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "mean_word_length"
    if text.count("#") / n > cfg.max_symbol_word_ratio:
        return "hash_symbols"
    if (text.count("...") + text.count("…")) / n > cfg.max_symbol_word_ratio:
        return "ellipsis_symbols"
    if sum(any(c.isalpha() for c in w) for w in words) / n < cfg.min_alpha_words_fraction:
        return "non_alpha_words"
    if sum(w.lower() in GOPHER_STOP_WORDS for w in words) < cfg.min_stop_words:
        return "stop_words"
    return None


@dataclass
class GopherRepetitionConfig:
    """Gopher repetition filter, Rae et al. 2021, Appendix A.1.1 Table A1 (datatrove's
    GopherRepetitionFilter defaults). Fractions of lines, paragraphs or characters, as in the paper."""

    max_duplicate_line_fraction: float = 0.30
    """Lines that repeat an earlier line, as a fraction of lines."""
    max_duplicate_paragraph_fraction: float = 0.30
    """Paragraphs (split on blank lines) that repeat an earlier one, as a fraction of paragraphs."""
    max_duplicate_line_char_fraction: float = 0.20
    """Characters in repeated lines, as a fraction of all characters."""
    max_duplicate_paragraph_char_fraction: float = 0.20
    """Characters in repeated paragraphs, as a fraction of all characters."""
    max_top_ngram_char_fraction: dict[str, float] = field(default_factory=lambda: {"2": 0.20, "3": 0.18, "4": 0.16})
    """Characters covered by the most frequent word n-gram (n = key), as a fraction of word characters."""
    max_duplicate_ngram_char_fraction: dict[str, float] = field(
        default_factory=lambda: {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10})
    """Characters of words inside repeats of an earlier word n-gram (n = key), as a fraction of word characters."""


def _duplicates(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    num = chars = 0
    for item in items:
        if item in seen:
            num += 1
            chars += len(item)
        else:
            seen.add(item)
    return num, chars


def gopher_repetition(text: str, cfg: GopherRepetitionConfig, *, cjk: bool) -> Optional[str]:
    """The first Gopher repetition check the document fails, or None. Word n-grams skipped when `cjk`."""
    total = max(len(text), 1)
    paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p]
    if paragraphs:
        num, chars = _duplicates(paragraphs)
        if num / len(paragraphs) > cfg.max_duplicate_paragraph_fraction:
            return "duplicate_paragraphs"
        if chars / total > cfg.max_duplicate_paragraph_char_fraction:
            return "duplicate_paragraph_chars"
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        num, chars = _duplicates(lines)
        if num / len(lines) > cfg.max_duplicate_line_fraction:
            return "duplicate_lines"
        if chars / total > cfg.max_duplicate_line_char_fraction:
            return "duplicate_line_chars"
    if cjk:
        return None
    words = words_of(text)
    word_chars = max(sum(len(w) for w in words), 1)
    for n_str, limit in sorted(cfg.max_top_ngram_char_fraction.items(), key=lambda kv: int(kv[0])):
        n = int(n_str)
        if len(words) < n:
            continue
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        gram, count = counts.most_common(1)[0]
        if count > 1 and count * sum(len(w) for w in gram) / word_chars > limit:
            return f"top_{n}_gram"
    for n_str, limit in sorted(cfg.max_duplicate_ngram_char_fraction.items(), key=lambda kv: int(kv[0])):
        n = int(n_str)
        if len(words) < n:
            continue
        seen: set[tuple[str, ...]] = set()
        covered = np.zeros(len(words), dtype=bool)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            if gram in seen:  # repeats only, the first occurrence is not counted (as datatrove)
                covered[i:i + n] = True
            else:
                seen.add(gram)
        if sum(len(w) for w, c in zip(words, covered) if c) / word_chars > limit:
            return f"duplicate_{n}_grams"
    return None


# -------------------------------------------------------------------------------------------- C4
@dataclass
class C4QualityConfig:
    """C4 page rules, Raffel et al. 2020 (JMLR 21:140, Section 2.2), with the numbers of the reference
    implementation (tensorflow_datasets `c4_utils`, reproduced by datatrove's C4QualityFilter).
    Lines without terminal punctuation, with fewer than `min_words_per_line` words or mentioning
    javascript are removed first; the page then fails on too few sentences, `lorem ipsum` or `{`."""

    min_sentences: int = 5
    """Fewer sentences than this in the kept lines fails (reference code: 5)."""
    min_words_per_line: int = 3
    """Lines with fewer words are removed before counting (reference code: 3; skipped for CJK)."""
    max_word_length: int = 1000
    """Lines holding a longer word are removed."""
    reject_lorem_ipsum: bool = True
    """A page containing `lorem ipsum` fails."""
    reject_curly_bracket: bool = True
    """A page containing `{` in a kept line fails (C4's heuristic for code)."""


_END_PUNCT = (".", "?", "!", '"', "'")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$|[\"'”])")
_SENTENCE_END_CJK = re.compile(r"[。！？]+|[.!?]+(?=\s|$|[\"'”」』])")  # CJK full stops need no following space


def c4_quality(text: str, cfg: C4QualityConfig, *, cjk: bool) -> Optional[str]:
    """The first C4 rule the page fails, or None. Sentences are counted by terminal punctuation."""
    ends = _END_PUNCT + _CJK_TERMINAL if cjk else _END_PUNCT
    sentences = 0
    for raw in text.splitlines():
        line = raw.strip()
        words = line.split()
        if any(len(w) > cfg.max_word_length for w in words):
            continue
        if not line.endswith(ends) or line.endswith("..."):
            continue
        if not cjk and len(words) < cfg.min_words_per_line:
            continue
        lower = line.lower()
        if cfg.reject_lorem_ipsum and "lorem ipsum" in lower:
            return "lorem_ipsum"
        if "javascript" in lower:
            continue
        if cfg.reject_curly_bracket and "{" in line:
            return "curly_bracket"
        sentences += max(len((_SENTENCE_END_CJK if cjk else _SENTENCE_END).findall(line)), 1)
    if sentences < cfg.min_sentences:
        return "too_few_sentences"
    return None


# --------------------------------------------------------------------------------------- FineWeb
@dataclass
class FineWebQualityConfig:
    """FineWeb's own filters, Penedo et al. 2024 ("The FineWeb Datasets", arXiv:2406.17557,
    Section 3.3.3; datatrove's FineWebQualityFilter defaults)."""

    min_punct_line_fraction: float = 0.12
    """Lines ending in terminal punctuation at or below this fraction fail (paper: 0.12)."""
    max_short_line_fraction: float = 0.67
    """Lines of at most `short_line_chars` characters at or above this fraction fail (paper: 0.67)."""
    short_line_chars: int = 30
    """A line this short or shorter is "short" (paper: 30)."""
    max_duplicate_line_char_fraction: float = 0.1
    """Characters in duplicated lines at or above this fraction fail (paper: 0.1; datatrove: 0.01)."""
    max_newline_word_ratio: float = 0.3
    """Newlines per word above this fail (datatrove's list_ratio; skipped for CJK)."""


def fineweb_quality(text: str, cfg: FineWebQualityConfig, *, cjk: bool) -> Optional[str]:
    """The first FineWeb rule the document fails, or None."""
    lines = text.split("\n")
    ends = (".", "'", '"', "!", "?") + (_CJK_TERMINAL if cjk else ())
    if sum(line.rstrip().endswith(ends) for line in lines) / len(lines) <= cfg.min_punct_line_fraction:
        return "punct_lines"
    if sum(len(line) <= cfg.short_line_chars for line in lines) / len(lines) >= cfg.max_short_line_fraction:
        return "short_lines"
    _, dup_chars = _duplicates([line for line in lines if line.strip()])
    if dup_chars / max(len(text.replace("\n", "")), 1) >= cfg.max_duplicate_line_char_fraction:
        return "duplicate_line_chars"
    if not cjk:
        words = words_of(text)
        if text.count("\n") / max(len(words), 1) > cfg.max_newline_word_ratio:
            return "list_like"
    return None
