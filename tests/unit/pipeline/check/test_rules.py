"""Unit tests of the rules file (pipeline.check.rules: defaults, merging, strict keys) and of the
rules evaluated on counts and histograms (pipeline.check.quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.check.quality import (
    evaluate_drop_fraction,
    evaluate_lengths,
    evaluate_script_shares,
    percentile,
)
from pipeline.check.rules import RulesConfig, ScriptSharesRule, load_rules
from schemas.errors import ConfigError
from schemas.manifest import Accounting
from schemas.verify.results import FAIL, PASS, SKIP
from tests.conftest import DATA_DIR


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
    rules = load_rules(DATA_DIR / "check_rules.json")
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

