"""Unit tests of `cpt-prep check`'s parts: the vectorised shard inspection and document hashes, the
rules file (defaults, strict keys), the quality-rule evaluation, scripts, and the published
heuristics (Gopher, C4, FineWeb) on English and Chinese text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import check_shards
from pipeline.check_shards import inspect_documents, iter_groups
from pipeline.check_quality import evaluate_drop_fraction, evaluate_lengths, evaluate_script_shares, percentile
from pipeline.rules import FAIL, PASS, SKIP, RulesConfig, ScriptSharesRule, load_rules
from pipeline.text_quality import (
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
from schemas.errors import ConfigError
from schemas.manifest import Accounting

SEP, VOCAB = 9, 12
LUT = np.zeros(VOCAB + 1, dtype=bool)
LUT[[9, 10]] = True  # 9 = separator, 10 = another control token


def _inspect(rows: list[list[int]], dtype=np.uint32):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([i for r in rows for i in r], dtype=dtype)
    return inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)


# ---------------------------------------------------------------------------- inspect_documents
def test_inspect_finds_each_structural_problem_by_row():
    d = _inspect([[1, 2, SEP], [3, 4], [], [5, SEP, 6, SEP], [7, 10, SEP], [8, 12, SEP], [SEP]])
    assert d.missing_separator.tolist() == [1, 2]
    assert d.control_inside.tolist() == [3, 4] and d.control_ids.tolist() == [SEP, 10]
    assert d.over_vocab.tolist() == [5] and d.max_id == 12
    assert d.content_lengths.tolist() == [2, 2, 0, 3, 2, 2, 0]


def test_inspect_ids_of_a_narrow_dtype_never_reach_a_wide_vocab():
    offsets = np.array([0, 3], dtype=np.int64)
    lut = np.zeros(70_001, dtype=bool)
    lut[69_999] = True
    d = inspect_documents(offsets, np.array([1, 65535, 7], dtype=np.uint16), separator_id=7, vocab_size=70_000, control_lut=lut)
    assert len(d.over_vocab) == 0 and len(d.missing_separator) == 0 and len(d.control_inside) == 0


def test_document_hash_depends_on_content_not_position_or_separator():
    d = _inspect([[1, 2, 3, SEP], [4, SEP], [1, 2, 3, SEP], [1, 2, 3], [3, 2, 1, SEP], [0, 1, 2, 3, SEP], [SEP], []])
    h = d.hashes.tolist()
    assert h[0] == h[2] == h[3]  # same ids, with or without the trailing separator
    assert len({h[0], h[1], h[4], h[5], h[6]}) == 5  # order and a leading 0 matter
    assert h[6] == h[7]  # both empty


def test_document_hashes_have_no_collisions_on_many_random_documents():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 5, size=rng.integers(1, 12))) + [SEP] for _ in range(20_000)]
    d = _inspect(rows)
    distinct = {tuple(r) for r in rows}
    assert len(np.unique(d.hashes)) == len(distinct)


def test_groups_of_batches_give_the_same_findings_as_one_group(monkeypatch):
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(0, VOCAB + 2, size=rng.integers(0, 9))) for _ in range(300)]
    ids_type = pa.list_(pa.uint32())
    batches = [pa.record_batch([pa.array(rows[i:i + 37], ids_type), pa.array(np.zeros(len(rows[i:i + 37]), np.uint32)),
                                pa.array(np.arange(i, i + len(rows[i:i + 37]), dtype=np.uint64) + 1)], names=["input_ids", "source_index", "line"])
               for i in range(0, 300, 37)]
    table = pa.Table.from_batches(batches)

    def collect():
        out = {"missing": [], "ctrl": [], "over": [], "hashes": [], "lines": []}
        for row0, offsets, values, _, lines in iter_groups(table):
            d = inspect_documents(offsets, values, separator_id=SEP, vocab_size=VOCAB, control_lut=LUT)
            out["missing"] += (d.missing_separator + row0).tolist()
            out["ctrl"] += (d.control_inside + row0).tolist()
            out["over"] += (d.over_vocab + row0).tolist()
            out["hashes"] += d.hashes.tolist()
            out["lines"] += lines.tolist()
        return out

    monkeypatch.setattr(check_shards, "GROUP_TOKENS", 1)  # one batch per group
    small = collect()
    monkeypatch.setattr(check_shards, "GROUP_TOKENS", 10**9)  # every batch in one group
    big = collect()
    assert small == big and big["lines"] == list(range(1, 301))
    expected = _inspect(rows)
    assert big["missing"] == expected.missing_separator.tolist() and big["hashes"] == expected.hashes.tolist()


# ----------------------------------------------------------------------------------- rules file
def test_defaults_and_merge(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"_note": "a comment", "drop_fraction": {"max_fraction": {"empty": 0.01}},
                                "length_percentiles": {"bounds": {"p90": {"max": 500}}}, "gopher_quality": {"enabled": True, "min_words": 20}}))
    rules = load_rules(path)
    assert rules.drop_fraction.max_fraction["empty"] == 0.01 and rules.drop_fraction.max_fraction["too_short"] == 0.5  # merged
    assert rules.length_percentiles.bounds == {"p90": {"max": 500}}  # replaced
    assert rules.gopher_quality.enabled and rules.gopher_quality.params.min_words == 20 and rules.gopher_quality.params.max_words == 100_000
    assert not rules.c4_quality.enabled
    assert load_rules(None) == RulesConfig()


def test_example_rules_file_loads():
    rules = load_rules(Path(__file__).resolve().parents[2] / "data" / "check_rules.json")
    assert rules.gopher_quality.enabled and rules.script_shares.bounds["Han"] == {"min": 0.1}


@pytest.mark.parametrize("raw, needle", [
    ({"no_such_rule": {}}, "unknown rule 'no_such_rule'"),
    ({"short_documents": {"max_tokenz": 3}}, "unknown key 'max_tokenz'"),
    ({"gopher_quality": {"min_wordz": 3}}, "unknown key 'min_wordz'"),
    ({"drop_fraction": {"max_fraction": {"typo": 0.1}}}, "unknown drop reason 'typo'"),
    ({"drop_fraction": {"max_fraction": {"empty": 1.5}}}, "expected a fraction"),
    ({"short_documents": {"max_tokens": 2.5}}, "expected an integer"),
    ({"short_documents": {"enabled": "yes"}}, "expected true or false"),
    ({"length_percentiles": {"bounds": {"median": {"min": 1}}}}, "unknown percentile"),
    ({"length_percentiles": {"bounds": {"p50": {"least": 1}}}}, "expected {"),
    ({"script_shares": {"bounds": {"Klingon": {"min": 0.1}}}}, "unknown script"),
    ({"split_size": {"min_tokens": {"test": 1}}}, "expected splits"),
    ({"near_duplicates": {"num_bands": 0}}, "expected an integer >= 1"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_rules_are_config_errors(raw, needle):
    with pytest.raises(ConfigError, match=None) as info:
        RulesConfig.from_dict(raw, source="rules.json")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unreadable_rules_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_rules(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_rules(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------- evaluation
def test_percentile_is_nearest_rank():
    counts = np.bincount([1, 2, 3, 4, 5, 6, 7, 8, 9, 100])
    assert percentile(counts, 50) == 5 and percentile(counts, 90) == 9 and percentile(counts, 99) == 100
    assert percentile(counts, 1) == 1 and percentile(counts, 100) == 100


def test_drop_fraction_pass_and_fail():
    acc = Accounting(num_records=100, kept={"train": 50}, dropped={"exact_duplicate": 45, "empty": 5})
    rules = RulesConfig().drop_fraction
    results = {r.rule: r for r in evaluate_drop_fraction(rules, acc)}
    assert results["drop_fraction.exact_duplicate"].status == PASS and results["drop_fraction.exact_duplicate"].value == 0.45
    rules.max_fraction["exact_duplicate"] = 0.4
    results = {r.rule: r for r in evaluate_drop_fraction(rules, acc)}
    bad = results["drop_fraction.exact_duplicate"]
    assert bad.status == FAIL and bad.threshold == 0.4 and "45 of 100" in bad.message
    assert results["drop_fraction.total"].status == PASS and results["drop_fraction.total"].value == 0.5


def test_length_rules_fail_on_short_documents_and_skip_empty_split():
    rules = RulesConfig()
    counts = np.bincount([0] * 30 + [50] * 70)
    results = {r.rule: r for r in evaluate_lengths(rules.length_percentiles, rules.short_documents, "train", counts)}
    assert results["length_percentiles.p1"].status == FAIL and results["length_percentiles.p1"].value == 0
    assert results["length_percentiles.p50"].status == PASS and results["length_percentiles.p50"].value == 50
    assert results["short_documents"].status == FAIL and results["short_documents"].value == 0.3
    empty = evaluate_lengths(rules.length_percentiles, rules.short_documents, "eval", np.zeros(1, dtype=np.int64))
    assert {r.status for r in empty} == {SKIP}


def test_script_share_bounds():
    counts = {"Latin": 700, "Han": 300}
    assert evaluate_script_shares(ScriptSharesRule(), "train", counts)[0].status == PASS
    rule = ScriptSharesRule(bounds={"Han": {"min": 0.4}, "Latin": {"max": 0.8}})
    results = {r.rule: r for r in evaluate_script_shares(rule, "train", counts)}
    assert results["script_shares.Han"].status == FAIL and results["script_shares.Han"].value == 0.3
    assert results["script_shares.Latin"].status == PASS


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


# ------------------------------------------------------------------------------ heuristics
GOOD_EN = ("The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the members agreed "
           "that the library should receive more funding, and that the new reading room would open in the spring. Several "
           "residents spoke in favour of the plan, while others asked whether the money could be found without raising taxes. "
           "The chair promised to publish the full minutes of the meeting by the end of the week.")
GOOD_ZH = "这本书的内容非常丰富，作者从历史、文化和经济三个角度分析了城市的发展过程。读完以后让我对身边的街道有了全新的认识！"
ZH_REVIEWS = [
    "物流速度很快，包装也很结实，打开以后发现商品和描述完全一致，客服的态度也非常好，下次还会继续在这家店购买。",
    "酒店的位置很方便，离地铁站只有五分钟的路程，房间虽然不大但是干净整洁，早餐的种类也比较多，总体来说性价比很高。",
    "这部电影的节奏有些拖沓，前半部分铺垫太长，但是演员的表演很有感染力，结尾的反转也出乎意料，值得一看。",
    "手机用了一个星期，电池续航比想象中好，拍照效果在白天很清晰，晚上稍微有些噪点，系统运行流畅没有卡顿。",
    "餐厅的环境安静优雅，服务员上菜及时，招牌鱼做得鲜嫩入味，只是甜点偏甜了一些，价格在这个地段算是合理。",
]


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


# ------------------------------------------------------------------------------ near duplicates
def _prose(count: int) -> list[str]:
    import re

    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(line.strip() for line in para.strip().split("\n"))
            if len(text.split()) >= 60 and not para.startswith((" ", ">>>")) and text not in out:
                out.append(text)
    return out[:count]


def test_candidate_pairs_from_equal_bands():
    from pipeline.check_near import candidate_pairs

    q = np.array([[1, 2], [3, 4], [1, 9], [7, 4]], dtype=np.uint64)
    assert candidate_pairs(q).tolist() == [[0, 2], [1, 3]]
    index = np.array([[5, 5], [3, 8], [0, 9]], dtype=np.uint64)
    assert candidate_pairs(q, index).tolist() == [[1, 1], [2, 2]]


def test_near_overlap_recheck_finds_edited_copies_in_english_and_chinese():
    from types import SimpleNamespace

    from pipeline.check_near import NearChecker, _overlap
    from pipeline.check_text import TextSample

    english = _prose(40)
    chinese = [GOOD_ZH, *ZH_REVIEWS]
    train = english[:30] + chinese[:4]
    edited = []
    for text in english[:5]:
        words = text.split()
        words[len(words) // 3] = "zebra"
        edited.append(" ".join(words))
    edited.append(chinese[0].replace("历史", "历代", 1))  # one character edited
    ev = edited + english[30:] + chinese[4:]
    manifest = SimpleNamespace(dedup={"seed": 1, "shingles": {"word_ngram": 5, "char_ngram": 5}}, config={})
    checker = NearChecker(manifest, RulesConfig(), seed=0)
    for a, b in zip(english[:5] + [chinese[0]], edited):
        assert checker.jaccard(a, b) >= 0.8
    refs = lambda split, n: [(f"{split}/x.arrow", i) for i in range(n)]  # noqa: E731
    result = _overlap(checker, TextSample("train", refs("train", len(train)), train, len(train)), TextSample("eval", refs("eval", len(ev)), ev, len(ev)))
    assert result.status == FAIL and result.value == 6 and result.row == 0
    clean = _overlap(checker, TextSample("train", refs("train", 25), english[5:30], 25), TextSample("eval", refs("eval", len(ev)), ev, len(ev)))
    assert clean.status == PASS and clean.value == 0


def test_near_checker_never_uses_the_build_seed():
    from types import SimpleNamespace

    from pipeline.check_near import CHECK_SEED_OFFSET, NearChecker

    manifest = SimpleNamespace(dedup={"seed": CHECK_SEED_OFFSET}, config={})
    assert NearChecker(manifest, RulesConfig(), seed=0).hasher.seed != CHECK_SEED_OFFSET
