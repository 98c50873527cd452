"""build_dataset: every record's outcome, the accounting invariant, the drop log, determinism across
worker counts, splits (eval inputs, eval_fraction, max samples), dedup switches, and failure safety."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.build.run import BuildOptions, build_dataset
from pipeline.cli import main
from schemas.config import DataConfig
from schemas.errors import CptError, DataError, InputError, TokenizerError
from schemas.manifest import (
    DROP_REASONS,
    MANIFEST_NAME,
    open_shard,
    read_manifest,
)
from schemas.verify.dataset import verify_or_raise

WORDS = (
    "river mountain village harbor market winter summer garden library window bridge forest lantern "
    "morning evening travel letter music teacher student engine signal circuit planet orbit measure "
    "number table theory method result history silver golden quiet bright narrow gentle distant"
).split()


def prose(seed: int, num_words: int = 80) -> str:
    """A distinct pseudo-sentence stream (unique word 5-grams across seeds)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words)).capitalize() + "."


def near_copy(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "zebra"  # one word of 80: word 5-gram Jaccard ~0.89
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Inputs with one of every outcome; `expected` gives each record's outcome by (file, line)."""
    root = tmp_path_factory.mktemp("corpus")
    e1, e2, t1, j1 = prose(1), prose(2), prose(3), prose(4)
    eval_lines = [e1, "", e1.upper(), e2]
    train_lines = [
        t1,  # 1 kept
        "tiny",  # 2 too_short
        "   ",  # 3 empty
        t1.replace(".", "!").lower(),  # 4 exact_duplicate of 1 (normalized text equal)
        e1,  # 5 overlaps_eval (exact)
        near_copy(t1),  # 6 near_duplicate of 1
        near_copy(e2),  # 7 overlaps_eval (near)
        "<|endoftext|> is spelled inside this document <tool_call>",  # 8 kept, encoded as plain text
    ] + [prose(100 + i) for i in range(30)]  # 9.. kept (filler, so there are several chunks)
    (root / "eval.txt").write_text("\n".join(eval_lines) + "\n", encoding="utf-8")
    train_bytes = "\n".join(train_lines).encode() + b"\nbad \xff bytes\nnul \x00 byte\n"  # 39 invalid_utf8, 40 invalid_utf8
    (root / "train.txt").write_bytes(train_bytes)
    jsonl = [json.dumps({"text": j1}), "{broken", json.dumps({"text": "short"})]
    (root / "more.jsonl.gz").write_bytes(gzip.compress(("\n".join(jsonl) + "\n").encode()))
    return root


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A small real byte-level BPE tokenizer (vocabulary ~400, trained here in milliseconds) for the
    tests of outcome logic, where the Qwen2 tokenizer's 3 s of loading buys nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([prose(i) for i in range(50)], trainer)
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def options(corpus: Path, output: Path, tokenizer, **kw) -> BuildOptions:
    defaults = dict(
        inputs=[str(corpus / "train.txt"), str(corpus / "more.jsonl.gz")],
        eval_inputs=[str(corpus / "eval.txt")],
        output=output,
        tokenizer=str(tokenizer),
        data=DataConfig(shard_target_bytes=4096),
        workers=1,
        progress=False,
    )
    defaults.update(kw)
    return BuildOptions(**defaults)


def drop_log_rows(folder: Path) -> list[tuple]:
    table = open_shard(folder / "drop_log.arrow")
    return list(zip(*[table.column(c).to_pylist() for c in table.column_names]))


def shard_rows(folder: Path, split: str) -> list[tuple]:
    manifest = read_manifest(folder)
    rows = []
    for shard in manifest.splits[split].shards:
        t = open_shard(folder / shard.path)
        rows += list(zip(t.column("source_index").to_pylist(), t.column("line").to_pylist(), t.column("input_ids").to_pylist()))
    return rows


@pytest.fixture(scope="module")
def built(corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "shards"
    return build_dataset(options(corpus, out, tokenizer_dir)), out


def test_every_record_has_its_expected_outcome(built):
    result, out = built
    m = result.manifest
    assert [Path(i.path).name for i in m.inputs] == ["eval.txt", "train.txt", "more.jsonl.gz"]  # eval first
    assert [i.role for i in m.inputs] == ["eval", "train", "train"]
    acc = m.accounting
    assert acc.num_records == 4 + 40 + 3
    assert acc.kept == {"train": 1 + 1 + 30 + 1, "eval": 2}
    assert acc.dropped == {
        "empty": 2,
        "too_short": 2,
        "invalid_utf8": 2,
        "invalid_record": 1,
        "exact_duplicate": 2,
        "near_duplicate": 1,
        "overlaps_eval": 2,
    }
    assert list(acc.dropped) == [r for r in DROP_REASONS if r in acc.dropped]  # stable order
    assert acc.problems() == []
    # Drop log: one row per dropped record, in input order, duplicates pointing at their original.
    rows = drop_log_rows(out)
    assert len(rows) == sum(acc.dropped.values()) == m.drop_log.num_rows
    assert rows == [
        (0, 2, "empty", -1, -1),
        (0, 3, "exact_duplicate", 0, 1),
        (1, 2, "too_short", -1, -1),
        (1, 3, "empty", -1, -1),
        (1, 4, "exact_duplicate", 1, 1),
        (1, 5, "overlaps_eval", 0, 1),
        (1, 6, "near_duplicate", 1, 1),
        (1, 7, "overlaps_eval", 0, 4),
        (1, 39, "invalid_utf8", -1, -1),
        (1, 40, "invalid_utf8", -1, -1),
        (2, 2, "invalid_record", -1, -1),
        (2, 3, "too_short", -1, -1),
    ]


def test_kept_documents_in_order_with_separator(built, corpus, qwen_tokenizer):
    result, out = built
    sep = result.manifest.tokenizer.separator_id
    controls = set(result.manifest.tokenizer.control_token_ids)
    train_lines = (corpus / "train.txt").read_text(encoding="utf-8", errors="replace").split("\n")
    rows = shard_rows(out, "train")
    assert [(s, line) for s, line, _ in rows] == [(1, 1), (1, 8)] + [(1, n) for n in range(9, 39)] + [(2, 1)]
    for source, line, ids in rows:
        assert ids[-1] == sep and not set(ids[:-1]) & controls
        if source == 1:
            assert qwen_tokenizer.decode(ids[:-1]) == train_lines[line - 1]
    assert len(result.manifest.splits["train"].shards) > 1  # shard_target_bytes=4096 rolled over
    assert result.manifest.splits["train"].num_tokens == sum(len(ids) for *_, ids in rows)
    verify_or_raise(result.manifest, out)
    assert result.manifest.dedup  # the parameters used are recorded
    assert result.manifest.config["min_length"] == 10


def test_output_identical_across_worker_counts(built, corpus, tokenizer_dir, tmp_path):
    _, one = built
    two = tmp_path / "two"
    build_dataset(options(corpus, two, tokenizer_dir, workers=2, chunk_bytes=700))
    assert_same_output(one, two)


def assert_same_output(one: Path, two: Path) -> None:
    """Every file byte-identical, the manifest apart from `created_at`."""
    files_one = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files_one == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files_one:
        if rel.name == MANIFEST_NAME:
            a, b = (json.loads((d / rel).read_text()) for d in (one, two))
            a.pop("created_at"), b.pop("created_at")
            assert a == b
        else:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_cached_tokenizer_profile_gives_the_same_output(corpus, bpe_dir, tmp_path, monkeypatch):
    """The second build reads the tokenizer's profile from the cache (no transformers); its output
    is the first one's, byte for byte."""
    from pipeline.tokenize import load

    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    original = load.load_profile
    monkeypatch.setattr("pipeline.build.run.load_profile", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    build_dataset(options(corpus, tmp_path / "cold", bpe_dir))
    build_dataset(options(corpus, tmp_path / "warm", bpe_dir))
    assert [p.cached for p in seen] == [False, True]
    assert_same_output(tmp_path / "cold", tmp_path / "warm")


def test_max_samples_keep_the_first_ones(corpus, bpe_dir, tmp_path):
    result = build_dataset(options(corpus, tmp_path / "o", bpe_dir, data=DataConfig(max_train_samples=3, max_eval_samples=1)))
    acc = result.manifest.accounting
    assert acc.kept == {"train": 3, "eval": 1}
    # eval: e2 is over the limit, so train line 7 (its near copy) no longer overlaps eval and is kept.
    assert [(s, line) for s, line, _ in shard_rows(tmp_path / "o", "train")] == [(1, 1), (1, 7), (1, 8)]
    assert acc.dropped["over_max_samples"] == 1 + 30 + 1  # eval line 4; train lines 9-38; jsonl line 1
    assert acc.problems() == []


def test_eval_fraction_is_stable_and_leaves_no_overlap(corpus, bpe_dir, tmp_path):
    data = DataConfig(eval_fraction=0.3, split_seed=7)
    inputs = [str(corpus / "eval.txt"), str(corpus / "train.txt")]
    a = build_dataset(options(corpus, tmp_path / "a", bpe_dir, inputs=inputs, eval_inputs=[], data=data))
    b = build_dataset(options(corpus, tmp_path / "b", bpe_dir, inputs=inputs[::-1], eval_inputs=[], data=data))
    assert all(i.role == "train" for i in a.manifest.inputs)

    def split_of(folder):
        return {tuple(ids): split for split in ("train", "eval") for *_, ids in shard_rows(folder, split)}

    sa, sb = split_of(tmp_path / "a"), split_of(tmp_path / "b")
    assert 0 < a.manifest.accounting.kept["eval"] < a.manifest.accounting.kept["train"]
    common = set(sa) & set(sb)
    assert len(common) >= len(sa) - 2  # only which copy of a near pair is first can differ
    assert all(sa[d] == sb[d] for d in common)  # the split is a function of the document, not its position
    for result, folder in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        rows = {split: {tuple(ids) for *_, ids in shard_rows(folder, split)} for split in ("train", "eval")}
        assert not rows["train"] & rows["eval"]
        assert result.manifest.accounting.problems() == []


def test_dedup_switches(corpus, bpe_dir, tmp_path):
    no_decon = build_dataset(options(corpus, tmp_path / "a", bpe_dir, data=DataConfig(decontaminate=False)))
    assert "overlaps_eval" not in no_decon.manifest.accounting.dropped
    assert no_decon.manifest.accounting.dropped["exact_duplicate"] == 2
    no_dedup = build_dataset(options(corpus, tmp_path / "b", bpe_dir, data=DataConfig(filter_duplicates=False)))
    dropped = no_dedup.manifest.accounting.dropped
    assert "exact_duplicate" not in dropped and "near_duplicate" not in dropped
    assert dropped["overlaps_eval"] == 2  # still decontaminated against eval
    assert no_dedup.manifest.accounting.kept == {"train": 35, "eval": 3}
    neither = build_dataset(options(corpus, tmp_path / "c", bpe_dir, data=DataConfig(filter_duplicates=False, decontaminate=False)))
    assert neither.manifest.accounting.kept == {"train": 37, "eval": 3}


def test_existing_output_refused_then_replaced(corpus, bpe_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        build_dataset(options(corpus, out, bpe_dir))
    with pytest.raises(InputError, match="refusing to overwrite.*notes.txt"):
        build_dataset(options(corpus, out, bpe_dir, overwrite=True))
    (out / "notes.txt").unlink()
    build_dataset(options(corpus, out, bpe_dir))  # an empty folder is fine
    first = (out / "train" / "train-00000.arrow").read_bytes()
    build_dataset(options(corpus, out, bpe_dir, overwrite=True, data=DataConfig(shard_target_bytes=4096, min_length=200)))
    assert (out / "train" / "train-00000.arrow").read_bytes() != first
    assert read_manifest(out).config["min_length"] == 200
    verify_or_raise(read_manifest(out), out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_nothing_left_is_an_error_without_manifest(corpus, bpe_dir, tmp_path):
    with pytest.raises(DataError, match="nothing left in the train split.*min_length"):
        build_dataset(options(corpus, tmp_path / "o", bpe_dir, data=DataConfig(min_length=100000)))
    assert not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []


def test_wrong_jsonl_field_is_an_error(corpus, bpe_dir, tmp_path):
    with pytest.raises(InputError, match="text_field"):
        build_dataset(options(corpus, tmp_path / "o", bpe_dir, data=DataConfig(text_field="body")))


@pytest.fixture(scope="module")
def word_tokenizer_dir(tmp_path_factory):
    """A real word-level tokenizer whose base vocabulary also holds its separator: it fails (as it
    must) on the first document that spells `<|endoftext|>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "<|endoftext|>", *sorted(set(WORDS)), "zebra"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("wordtok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def test_failure_mid_run_leaves_old_output_and_no_staging(word_tokenizer_dir, tmp_path):
    lines = [prose(i).lower().rstrip(".") for i in range(200)]
    good = tmp_path / "good.txt"
    good.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    kw = dict(inputs=[str(good)], eval_inputs=[], output=out, tokenizer=str(word_tokenizer_dir), progress=False, chunk_bytes=2000)
    first = build_dataset(BuildOptions(**kw, workers=1))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:150] + ["river <|endoftext|> mountain village harbor"] + lines[150:]) + "\n")
    for workers in (1, 2):
        with pytest.raises(TokenizerError, match="control token id 1"):
            build_dataset(BuildOptions(**{**kw, "inputs": [str(bad)]}, workers=workers, overwrite=True))
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before  # the old, complete build is untouched
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert first.manifest.token_dtype == "uint16"  # small vocabulary


def test_duplicates_are_decided_before_tokenizing(word_tokenizer_dir, tmp_path):
    """Only kept documents are tokenized: a near duplicate that the tokenizer would refuse (it spells
    the separator, which this tokenizer's base vocabulary holds) is dropped, never encoded."""
    lines = [prose(i, num_words=300).lower().rstrip(".") for i in range(40)]
    words = lines[7].split(" ")
    poisoned = " ".join(words[:150] + ["<|endoftext|>"] + words[150:])
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(lines + [poisoned]) + "\n")
    kw = dict(output=tmp_path / "o", tokenizer=str(word_tokenizer_dir), progress=False, chunk_bytes=4000)
    for workers in (1, 2):
        result = build_dataset(BuildOptions(inputs=[str(corpus)], **kw, workers=workers, overwrite=True))
        assert result.manifest.accounting.dropped == {"near_duplicate": 1}
    alone = tmp_path / "alone.txt"
    alone.write_text(poisoned + "\n")
    with pytest.raises(TokenizerError, match="control token id 1"):  # what encoding it would have done
        build_dataset(BuildOptions(inputs=[str(alone)], **kw, overwrite=True))


def test_corrupt_second_input_fails_without_manifest(corpus, bpe_dir, tmp_path):
    data = gzip.compress(("\n".join(prose(i) for i in range(300)) + "\n").encode())
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CptError, match="cannot read input .*broken.txt.gz"):
        build_dataset(options(corpus, tmp_path / "o", bpe_dir, inputs=[str(corpus / "train.txt"), str(broken)]))
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.txt.gz"]


def test_eval_and_eval_fraction_together_is_refused(corpus, bpe_dir, tmp_path):
    with pytest.raises(InputError, match="use one way"):
        build_dataset(options(corpus, tmp_path / "o", bpe_dir, data=DataConfig(eval_fraction=0.1)))


def test_parquet_zst_and_folder_inputs(bpe_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": [prose(200 + i) for i in range(5)] + [None]}), folder / "a.parquet", row_group_size=2)
    (folder / "sub" / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(prose(300 + i) for i in range(4)) + "\n").encode()))
    result = build_dataset(BuildOptions(inputs=[str(folder)], output=tmp_path / "o", tokenizer=str(bpe_dir), progress=False))
    m = result.manifest
    assert [Path(i.path).name for i in m.inputs] == ["a.parquet", "b.txt.zst"]
    assert m.accounting.kept == {"train": 9} and m.accounting.dropped == {"empty": 1}
    assert [(s, line) for s, line, _ in shard_rows(tmp_path / "o", "train")] == [(0, i) for i in range(1, 6)] + [(1, i) for i in range(1, 5)]


def test_batched_and_one_by_one_dedup_agree(corpus, bpe_dir, tmp_path):
    """Without max_*_samples the near-duplicate lookups run per chunk in a vectorized batch; with a
    (never reached) limit they run one by one. Same outcomes, whatever the chunk size."""
    batched = build_dataset(options(corpus, tmp_path / "a", bpe_dir, chunk_bytes=700))
    serial = build_dataset(options(corpus, tmp_path / "b", bpe_dir, data=DataConfig(shard_target_bytes=4096, max_train_samples=10**9, max_eval_samples=10**9)))
    assert batched.manifest.accounting == serial.manifest.accounting
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.arrow"))
    assert files and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.arrow"))
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


REPO = Path(__file__).resolve().parents[4]
# A build in a child process whose files may not grow past `limit` bytes (RLIMIT_FSIZE): a write past
# it fails with EFBIG, as a full disk fails with ENOSPC. SIGXFSZ is ignored so the write returns the
# error instead of killing the process. No root, no mount: a real failing write.
LIMITED_BUILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _limited_build(limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED_BUILD, str(limit), "build", *argv, "--no_progress", "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("what", ["plain tokenizer copy", "shards", "drop log", "manifest"])
def test_full_disk_is_one_line_exit_2_and_keeps_the_old_output(what, bpe_dir, word_tokenizer_dir, tmp_path):
    from pipeline.tokenize.load import load_tokenizer, plain_text_backend_json

    lines = [prose(i).lower().rstrip(".") for i in range(300)]
    corpus = tmp_path / "corpus.txt"
    tokenizer = bpe_dir
    args = []
    if what == "plain tokenizer copy":
        corpus.write_text("\n".join(lines[:20]) + "\n")
    elif what == "shards":
        corpus.write_text("\n".join(lines) + "\n")  # one shard of ~80 KB
    elif what == "drop log":
        corpus.write_text("\n".join(lines[:20]) + "\n" * 200_000)  # 200,000 blank lines: a drop log of MBs
    else:  # many 1 KB shards: the manifest that lists them is the largest file
        corpus.write_text("\n".join(lines) + "\n")
        tokenizer, args = word_tokenizer_dir, ["--shard_target_bytes", "1024"]
    args += ["--tokenizer", str(tokenizer)]
    out = tmp_path / "out"
    assert main(["build", str(corpus), "--output", str(out), *args, "--no_progress"]) == 0
    sizes = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    sizes["tokenizer copy"] = len(plain_text_backend_json(load_tokenizer(str(tokenizer))).encode())
    largest, second = sorted(sizes, key=sizes.get, reverse=True)[:2]
    expected = {"plain tokenizer copy": "tokenizer copy", "shards": "train-00000.arrow", "drop log": "drop_log.arrow", "manifest": MANIFEST_NAME}
    assert largest == expected[what], sizes  # the write that fails is the one this case names
    limit = (sizes[largest] + sizes[second]) // 2  # every other file fits
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    result = _limited_build(limit, [str(corpus), "--output", str(out), "--overwrite", *args])
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and str(tmp_path) in errors[0] and "free there" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old output kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out"]  # no staging left
