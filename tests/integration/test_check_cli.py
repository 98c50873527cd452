"""`cpt-prep check` through its CLI (`pipeline.cli.main`): each structural check fails on a data set
made to break it and passes on a clean one; exit codes; json / github / text formats; the report.

Data sets are real Arrow shards + manifests written by the `write_token_dataset` factory from real
Qwen2 token ids; broken ones are edited afterwards (a rewritten shard gets its size and sha256
fixed up in the manifest, so the deeper checks are the ones that fail)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.cli import main
from schemas.manifest import open_shard, sha256_file, shard_schema

ZH = [
    "这本书的内容非常丰富，作者从历史、文化和经济三个角度分析了城市的发展过程，读完以后让我对身边的街道有了全新的认识。",
    "物流速度很快，包装也很结实，打开以后发现商品和描述完全一致，客服的态度也非常好，下次还会继续在这家店购买。",
    "酒店的位置很方便，离地铁站只有五分钟的路程，房间虽然不大但是干净整洁，早餐的种类也比较多，总体来说性价比很高。",
    "这部电影的节奏有些拖沓，前半部分铺垫太长，但是演员的表演很有感染力，结尾的反转也出乎意料，值得一看。",
]


def _english_paragraphs(count: int) -> list[str]:
    """Real English prose that ships with CPython (the language reference), >= 60 words each."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.strip("\n").split("\n")
            if any(line.startswith((" ", "\t", ">>>")) for line in lines):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text.split()) >= 60 and sum(c.isalpha() or c == " " for c in text) >= 0.9 * len(text) and text not in out:
                out.append(text)
            if len(out) == count:
                return out
    return out


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    en = _english_paragraphs(24)
    assert len(en) == 24
    return {"train": en[:16] + ZH[:3], "eval": en[16:] + ZH[3:]}


@pytest.fixture
def clean(tmp_path, write_token_dataset, qwen_tokenizer, texts) -> Path:
    enc = lambda docs: [qwen_tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]  # noqa: E731
    return write_token_dataset(tmp_path / "clean", train=enc(texts["train"]), eval=enc(texts["eval"]), target_bytes=3000)


def check(manifest: Path, *flags: str, capsys) -> tuple[int, dict]:
    code = main(["check", str(manifest), "--format", "json", *flags])
    out = capsys.readouterr().out
    return code, json.loads(out)


def failures(doc: dict, rule: str) -> list[dict]:
    return [r for r in doc["results"] if r["rule"] == rule and r["status"] == "fail"]


def edit_manifest(manifest: Path, fn) -> None:
    raw = json.loads(manifest.read_text())
    fn(raw)
    manifest.write_text(json.dumps(raw))


def read_in_memory(path: Path) -> pa.Table:
    """A shard read into memory (not memory-mapped), so the file can be rewritten while it is used."""
    return pa.ipc.open_stream(pa.BufferReader(path.read_bytes())).read_all()


def rewrite_shard(manifest: Path, rel: str, transform, *, dtype: str | None = None, fix_totals: bool = True) -> None:
    """Rewrite one shard's rows through `transform(list_of_id_lists)`, then record its new size and
    sha256 (and token count) in the manifest, as a consistent but broken build would."""
    path = manifest.parent / rel
    table = read_in_memory(path)
    rows = transform(table.column("input_ids").to_pylist())
    raw = json.loads(manifest.read_text())
    dtype = dtype or raw["token_dtype"]
    schema = shard_schema(dtype)
    batch = pa.record_batch([pa.array(rows, schema.field("input_ids").type), table.column("source_index").combine_chunks(),
                             table.column("line").combine_chunks()], schema=schema)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, schema) as w:
        w.write_batch(batch)
    for split in raw["splits"].values():
        for sh in split["shards"]:
            if sh["path"] == rel:
                sh["num_bytes"] = path.stat().st_size
                sh["sha256"] = sha256_file(path)
                if fix_totals:
                    delta = sum(map(len, rows)) - sh["num_tokens"]
                    sh["num_tokens"] += delta
                    split["num_tokens"] += delta
    manifest.write_text(json.dumps(raw))


# --------------------------------------------------------------------------------------- clean
def test_clean_dataset_passes(clean, capsys):
    code, doc = check(clean, capsys=capsys)
    assert code == 0, [r for r in doc["results"] if r["status"] != "pass"]
    assert doc["passed"] is True and doc["counts"]["fail"] == 0
    statuses = {r["rule"]: r["status"] for r in doc["results"]}
    for rule in ("schema_version", "shard_present", "shard_size", "shard_sha256", "shard_readable", "token_dtype", "separator_at_end",
                 "no_control_token_inside", "ids_below_vocab", "shard_totals", "split_totals", "accounting",
                 "train_eval_exact_overlap", "train_eval_near_overlap", "replacement_chars", "script_shares"):
        assert statuses.get(rule) == "pass", (rule, statuses.get(rule))
    for r in doc["results"]:
        assert set(r) == {"rule", "status", "value", "threshold", "split", "shard", "row", "message"}
    shares = [r for r in doc["results"] if r["rule"] == "script_shares" and r["split"] == "train"][0]["value"]
    assert shares["Latin"] > 0.5 and shares["Han"] > 0.01


# ------------------------------------------------------------------------------------ files
def test_flipped_byte_fails_sha256(clean, capsys):
    shard = clean.parent / "train/train-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    code, doc = check(clean, capsys=capsys)
    assert code == 1 and doc["passed"] is False
    [fail] = failures(doc, "shard_sha256")
    assert fail["shard"] == "train/train-00000.arrow" and fail["value"] != fail["threshold"] and "sha256" in fail["message"]


def test_missing_shard_fails(clean, capsys):
    (clean.parent / "eval/eval-00000.arrow").unlink()
    code, doc = check(clean, capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "shard_present")
    assert fail["shard"] == "eval/eval-00000.arrow" and fail["split"] == "eval" and "missing" in fail["message"]


def test_truncated_shard_fails_size_and_readability(clean, capsys):
    shard = clean.parent / "train/train-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:200])
    code, doc = check(clean, capsys=capsys)
    assert code == 1
    assert failures(doc, "shard_size")[0]["value"] == 200
    assert failures(doc, "shard_readable")[0]["shard"] == "train/train-00000.arrow"


# --------------------------------------------------------------------------------- token ids
def test_id_at_vocab_size_fails(tmp_path, write_token_dataset, qwen_tokenizer, capsys):
    vocab = len(qwen_tokenizer)
    manifest = write_token_dataset(tmp_path / "d", train=[[1, 2, 3], [4, 5, vocab], [7, 8, 9]], eval=[[10, 11, 12]])
    code, doc = check(manifest, capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "ids_below_vocab")
    assert (fail["shard"], fail["row"], fail["value"], fail["threshold"]) == ("train/train-00000.arrow", 1, vocab, vocab - 1)


def test_missing_separator_fails(clean, capsys):
    assert open_shard(clean.parent / "train/train-00000.arrow").num_rows >= 3
    rewrite_shard(clean, "train/train-00000.arrow", lambda rows: [r[:-1] if i == 1 else r for i, r in enumerate(rows)])
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1
    assert not failures(doc, "shard_sha256") and not failures(doc, "shard_totals")
    [fail] = failures(doc, "separator_at_end")
    assert (fail["shard"], fail["row"], fail["value"]) == ("train/train-00000.arrow", 1, 1)


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|im_start|>"])
def test_control_token_inside_fails(tmp_path, write_token_dataset, qwen_tokenizer, capsys, token):
    ctrl = qwen_tokenizer.convert_tokens_to_ids(token)
    manifest = write_token_dataset(tmp_path / "d", train=[[1, 2, 3], [4, 5, 6], [7, ctrl, 9]], eval=[[10, 11, 12]])
    code, doc = check(manifest, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "no_control_token_inside")
    assert (fail["shard"], fail["row"]) == ("train/train-00000.arrow", 2) and f"id {ctrl}" in fail["message"]


def test_token_dtype_other_than_recorded_fails(clean, capsys):
    rewrite_shard(clean, "eval/eval-00000.arrow", lambda rows: [[min(i, 65535) for i in r] for r in rows], dtype="uint16")
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "token_dtype")
    assert (fail["value"], fail["threshold"], fail["shard"]) == ("uint16", "uint32", "eval/eval-00000.arrow")


# ----------------------------------------------------------------------------- manifest totals
def test_altered_split_totals_fail(clean, capsys):
    edit_manifest(clean, lambda raw: raw["splits"]["train"].update(num_tokens=raw["splits"]["train"]["num_tokens"] + 1))
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "split_totals")
    assert fail["split"] == "train" and fail["threshold"]["tokens"] == fail["value"]["tokens"] + 1


def test_altered_shard_totals_fail(clean, capsys):
    edit_manifest(clean, lambda raw: raw["splits"]["eval"]["shards"][0].update(num_documents=99))
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "shard_totals")
    assert fail["shard"] == "eval/eval-00000.arrow" and fail["threshold"]["documents"] == 99
    assert failures(doc, "split_totals")  # the split total no longer equals the sum over its shards


def test_broken_accounting_fails(clean, capsys):
    edit_manifest(clean, lambda raw: raw["accounting"].update(num_records=raw["accounting"]["num_records"] + 3))
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "accounting")
    assert "records in" in fail["message"]


def test_kept_count_other_than_split_fails(clean, capsys):
    def edit(raw):
        raw["accounting"]["kept"]["train"] -= 1
        raw["accounting"]["dropped"]["too_short"] = 1

    edit_manifest(clean, edit)
    code, doc = check(clean, "--sample", "0", capsys=capsys)
    assert code == 1 and "kept[train]" in failures(doc, "accounting")[0]["message"]


# ------------------------------------------------------------------------------------ overlap
def test_exact_train_eval_overlap_fails(tmp_path, write_token_dataset, qwen_tokenizer, texts, capsys):
    enc = lambda docs: [qwen_tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]  # noqa: E731
    train = enc(texts["train"])
    manifest = write_token_dataset(tmp_path / "d", train=train, eval=enc(texts["eval"]) + [train[5]])
    code, doc = check(manifest, capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "train_eval_exact_overlap")
    assert (fail["shard"], fail["row"], fail["value"]) == ("train/train-00000.arrow", 5, 1)


def test_near_train_eval_overlap_fails(tmp_path, write_token_dataset, qwen_tokenizer, texts, capsys):
    enc = lambda docs: [qwen_tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]  # noqa: E731
    words = texts["train"][3].split()
    words[len(words) // 2] = "zebra"  # a one-word edit: word 5-gram Jaccard >= 0.8 for >= 50 words
    manifest = write_token_dataset(tmp_path / "d", train=enc(texts["train"]), eval=enc(texts["eval"] + [" ".join(words)]))
    code, doc = check(manifest, capsys=capsys)
    assert code == 1
    assert not failures(doc, "train_eval_exact_overlap")
    [fail] = failures(doc, "train_eval_near_overlap")
    assert fail["shard"] == "train/train-00000.arrow" and fail["row"] == 3 and fail["value"] == 1
    assert "eval/eval-00000.arrow" in fail["message"]


# ------------------------------------------------------------------------------ unreadable (2)
def test_unknown_schema_version_exits_2(clean, capsys):
    edit_manifest(clean, lambda raw: raw.update(schema_version=99))
    assert main(["check", str(clean)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "schema_version 99" in err and "Traceback" not in err


def test_unreadable_manifest_exits_2(clean, capsys):
    clean.write_text("{not json")
    code = main(["check", str(clean), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 2 and "not valid JSON" in captured.err
    assert json.loads(captured.out)["exit_code"] == 2


def test_missing_manifest_exits_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope" / "manifest.json")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_unknown_rule_exits_2(clean, tmp_path, capsys):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"split_size": {"min_tokenz": {"train": 5}}}))
    assert main(["check", str(clean), "--rules", str(rules)]) == 2
    assert "unknown key 'min_tokenz'" in capsys.readouterr().err


def test_rules_file_threshold_fails(clean, tmp_path, capsys):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"split_size": {"min_tokens": {"train": 10**9}}, "gopher_quality": {"enabled": True}}))
    code, doc = check(clean, "--rules", str(rules), capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "split_size.min_tokens")
    assert fail["split"] == "train" and fail["threshold"] == 10**9
    assert any(r["rule"] == "gopher_quality" for r in doc["results"])


def test_example_rules_file_is_valid(clean, capsys):
    rules = Path(__file__).resolve().parents[2] / "data" / "check_rules.json"
    code = main(["check", str(clean), "--rules", str(rules), "--show_rules"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["gopher_quality"]["enabled"] is True


def test_tokenizer_unavailable_skips_text_rules(clean, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    edit_manifest(clean, lambda raw: raw["tokenizer"].update(name_or_path=str(clean.parent / "no-such-tokenizer")))
    code, doc = check(clean, capsys=capsys)
    skipped = [r for r in doc["results"] if r["status"] == "skip"]
    assert code == 0 and {r["rule"] for r in skipped} >= {"train_eval_near_overlap", "replacement_chars"}
    assert all("--tokenizer" in r["message"] for r in skipped if r["rule"] == "replacement_chars")
    assert main(["check", str(clean), "--strict", "--format", "json"]) == 1
    capsys.readouterr()


def test_wrong_tokenizer_override_exits_2(clean, tokenizer_dir, capsys, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_tokens(["<extra_token_for_test>"], special_tokens=True)  # another vocabulary: another fingerprint
    tok.save_pretrained(tmp_path / "other-tok")
    assert main(["check", str(clean), "--tokenizer", str(tmp_path / "other-tok")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fingerprint" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------- formats
def test_github_format(clean, capsys, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    (clean.parent / "eval/eval-00000.arrow").unlink()
    code = main(["check", str(clean), "--format", "github", "--sample", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    errors = [line for line in lines if line.startswith("::error ")]
    assert errors and all(re.match(r"^::error file=[^,]+,title=cpt-prep check%3A [a-z_.]+::\S", line) for line in errors)
    assert any("eval/eval-00000.arrow" in line and "shard_present" in line for line in errors)
    assert any(line.startswith("::warning ") for line in lines)  # the text rules, skipped by --sample 0
    assert lines[-1].startswith("::notice title=cpt-prep check::") and "FAILED" in lines[-1]
    assert "| fail | shard_present |" in summary.read_text()


def test_text_format(clean, capsys):
    data = bytearray((clean.parent / "train/train-00000.arrow").read_bytes())
    data[-20] ^= 0xFF
    (clean.parent / "train/train-00000.arrow").write_bytes(bytes(data))
    code = main(["check", str(clean), "--sample", "0"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0].split()[:3] == ["STATUS", "RULE", "WHERE"]
    assert any(line.startswith("FAIL") and "shard_sha256" in line and "train/train-00000.arrow" in line for line in out)
    assert "FAILED" in out[-1]


# ---------------------------------------------------------------------------------- report
def test_report_is_self_contained_html_with_plots(clean, tmp_path, capsys):
    report = tmp_path / "report"
    code, _ = check(clean, "--report", str(report), capsys=capsys)
    assert code == 0
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for name in ("lengths.png", "sources.png", "outcomes.png", "clusters.png", "scripts.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train_eval_exact_overlap" in page and "PASSED" in page


# ------------------------------------------------------------------------------ the real build
def test_sample_build_passes_and_reports_duplicate_clusters(sample_manifest, tmp_path, capsys):
    """`cpt-prep build` on the bundled sample, then `cpt-prep check`: clean, exit 0, with the
    drop log's duplicate clusters in the report."""
    report = tmp_path / "report"
    code, doc = check(sample_manifest, "--report", str(report), capsys=capsys)
    assert code == 0, [r for r in doc["results"] if r["status"] != "pass"]
    statuses = {r["rule"]: r["status"] for r in doc["results"]}
    assert statuses["provenance"] == "pass" and statuses["train_eval_near_overlap"] == "pass" and statuses["accounting"] == "pass"
    assert "as the drop log lists" in [r for r in doc["results"] if r["rule"] == "accounting"][0]["message"]
    clusters = doc["stats"]["duplicate_clusters"]
    assert clusters["exact_duplicate"]["clusters"] > 0 and clusters["near_duplicate"]["clusters"] > 0
    assert clusters["exact_duplicate"]["documents"] >= 2 * clusters["exact_duplicate"]["clusters"]
    by_input = doc["stats"]["tokens_by_input"]
    assert sorted(Path(k).name for k in by_input["train"]) == ["extra.jsonl.gz", "train.txt"] and list(map(lambda k: Path(k).name, by_input["eval"])) == ["eval.txt"]
    assert sum(by_input["train"].values()) == json.loads(sample_manifest.read_text())["splits"]["train"]["num_tokens"]
    assert (report / "index.html").read_text().count("data:image/png;base64,") == 5


def test_record_with_two_outcomes_fails_accounting(sample_manifest, tmp_path, capsys):
    """A kept document whose (input, line) is also in the drop log: the record has two outcomes."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(sample_manifest.parent, folder)
    manifest = folder / "manifest.json"
    dropped = open_shard(folder / "drop_log.arrow").slice(0, 1).to_pylist()[0]
    rel = json.loads(manifest.read_text())["splits"]["eval"]["shards"][0]["path"]
    table = read_in_memory(folder / rel)
    sources = table.column("source_index").to_pylist()
    lines = table.column("line").to_pylist()
    sources[0], lines[0] = dropped["source_index"], dropped["line"]
    schema = table.schema
    with pa.OSFile(str(folder / rel), "wb") as f, pa.ipc.new_stream(f, schema) as w:
        w.write_batch(pa.record_batch([table.column("input_ids").combine_chunks(), pa.array(sources, pa.uint32()), pa.array(lines, pa.uint64())], schema=schema))
    edit_manifest(manifest, lambda raw: raw["splits"]["eval"]["shards"][0].update(num_bytes=(folder / rel).stat().st_size, sha256=sha256_file(folder / rel)))
    code, doc = check(manifest, "--sample", "0", capsys=capsys)
    assert code == 1
    [fail] = failures(doc, "accounting")
    assert "more than one outcome" in fail["message"] and f"line {dropped['line']}" in fail["message"]


def test_report_shows_dropped_examples_per_reason_and_dedup_settings_as_a_table(sample_manifest, tmp_path, capsys):
    import html

    from schemas.manifest import read_manifest

    report = tmp_path / "report"
    code, _ = check(sample_manifest, "--report", str(report), "--sample", "0", capsys=capsys)
    assert code == 0
    page = (report / "index.html").read_text()
    section = page[page.index("Dropped records: examples"):page.index("Rule results")]
    m = read_manifest(sample_manifest)
    for reason in m.accounting.dropped:
        shown = section.count(f"<td><code>{reason}</code></td>")
        assert shown == min(3, m.accounting.dropped[reason]), (reason, shown)
    first = open_shard(sample_manifest.parent / "drop_log.arrow").slice(0, 1).to_pylist()[0]
    path = m.inputs[first["source_index"]].path
    line = Path(path).read_text(encoding="utf-8").split("\n")[first["line"] - 1] if path.endswith(".txt") else None
    if line:
        assert html.escape(line[:200]) in section  # the text read back from the input
    dedup = page[page.index("<td>deduplication</td>"):]
    dedup = dedup[:dedup.index("</table>")]
    assert "{&quot;" not in dedup and "{" not in dedup  # a table, not a JSON blob
    assert "<tr><td><code>num_perm</code></td><td>112</td></tr>" in dedup and "word_ngram = 5" in dedup


REPORT_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_full_disk_while_writing_the_report_is_one_line_and_keeps_the_old_report(clean, tmp_path, capsys):
    """Files may not grow past 10 KB (RLIMIT_FSIZE, EFBIG: a real failing write, as on a full disk)."""
    import subprocess
    import sys

    report = tmp_path / "report"
    assert check(clean, "--report", str(report), capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    result = subprocess.run([sys.executable, "-c", REPORT_LIMITED, "10000", "check", str(clean), "--report", str(report)],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower() and "disk is full" in line]
    assert len(errors) == 1 and str(report) in errors[0] and "free there" in errors[0], result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before  # old report whole, no temporary file left
