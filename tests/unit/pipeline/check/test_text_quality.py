"""Unit tests of the text heuristics (pipeline.check.text_quality): scripts, CJK dominance and the
published Gopher, C4 and FineWeb filters on English and Chinese text."""

from __future__ import annotations

from pipeline.check.text_quality import (
    C4QualityConfig,
    FineWebQualityConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    c4_quality,
    fineweb_quality,
    gopher_quality,
    gopher_repetition,
    is_cjk_dominant,
    script_counts,
)

# ------------------------------------------------------------------------------ heuristics
GOOD_EN = ("The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the members agreed "
           "that the library should receive more funding, and that the new reading room would open in the spring. Several "
           "residents spoke in favour of the plan, while others asked whether the money could be found without raising taxes. "
           "The chair promised to publish the full minutes of the meeting by the end of the week.")


GOOD_ZH = "这本书的内容非常丰富，作者从历史、文化和经济三个角度分析了城市的发展过程。读完以后让我对身边的街道有了全新的认识！"



# ------------------------------------------------------------------------------------ scripts
def test_script_counts_by_unicode_range():
    assert script_counts("Hello, world! 123") == {"Latin": 10}
    assert script_counts("你好，世界。") == {"Han": 4}
    assert script_counts("Привет мир") == {"Cyrillic": 9}
    assert script_counts("مرحبا") == {"Arabic": 5}
    assert script_counts("こんにちは世界") == {"Kana": 5, "Han": 2}
    assert script_counts("Crème brûlée ½ €5 😀") == {"Latin": 11}
    assert script_counts("안녕") == {"Hangul": 2}
    assert script_counts("ሰላም") == {"Other": 3}  # Ethiopic: a script without its own bucket


def test_cjk_dominance():
    assert is_cjk_dominant(script_counts("这本书很好 good"))
    assert not is_cjk_dominant(script_counts("A long English sentence with 中文"))
    assert not is_cjk_dominant(script_counts("123 !!!"))


def test_gopher_quality():
    cfg = GopherQualityConfig()
    assert gopher_quality(GOOD_EN, cfg, cjk=False) is None
    assert gopher_quality("Too short to count as a web page.", cfg, cjk=False) == "too_few_words"
    assert gopher_quality(" ".join(["#tag"] * 60) + " the and", cfg, cjk=False) == "hash_symbols"
    assert gopher_quality("\n".join(["• item number one of the list and the rest"] * 10), cfg, cjk=False) == "bullet_lines"
    assert gopher_quality(" ".join(["x1"] * 60), cfg, cjk=False) == "mean_word_length"
    # Chinese has no spaces: the word rules would reject every document, so they are skipped.
    assert gopher_quality(GOOD_ZH, cfg, cjk=False) == "too_few_words"
    assert gopher_quality(GOOD_ZH, cfg, cjk=True) is None


def test_gopher_repetition():
    cfg = GopherRepetitionConfig()
    assert gopher_repetition(GOOD_EN, cfg, cjk=False) is None
    assert gopher_repetition("\n".join(["same line here"] * 5 + ["other"]), cfg, cjk=False) == "duplicate_lines"
    assert gopher_repetition(" ".join(["buy cheap shoes now"] * 20), cfg, cjk=False) == "top_2_gram"
    assert gopher_repetition(GOOD_ZH, cfg, cjk=True) is None


def test_c4_quality():
    cfg = C4QualityConfig()
    page = GOOD_EN + "\n" + GOOD_EN.replace("committee", "board")  # 8 sentences
    assert c4_quality(page, cfg, cjk=False) is None
    assert c4_quality(GOOD_EN, cfg, cjk=False) == "too_few_sentences"  # 4
    assert c4_quality(page + "\nLorem ipsum dolor sit amet, consectetur.", cfg, cjk=False) == "lorem_ipsum"
    assert c4_quality(page + "\nfunction f() { return x }", cfg, cjk=False) is None  # no terminal punctuation: the line is removed
    assert c4_quality(page + "\nThe code is { x = 1 } in the end.", cfg, cjk=False) == "curly_bracket"
    assert c4_quality("One sentence only.", cfg, cjk=False) == "too_few_sentences"
    assert c4_quality(GOOD_ZH * 3, cfg, cjk=True) is None


def test_fineweb_quality():
    cfg = FineWebQualityConfig()
    assert fineweb_quality(GOOD_EN, cfg, cjk=False) is None
    assert fineweb_quality("\n".join(["Home", "About us", "Contact", "Shop now"]), cfg, cjk=False) == "punct_lines"
    assert fineweb_quality("\n".join(["Short line one.", "Short line two.", "Short three."]), cfg, cjk=False) == "short_lines"
    assert fineweb_quality(GOOD_ZH, cfg, cjk=True) is None

