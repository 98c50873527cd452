"""`cpt-train` refuses what `cpt-prep check` refuses, before step 0 and with the check's reason: the
cases of a tampered data set that the trainer used to train on (exit 0). Each case edits a real data
set (real Arrow shards, real manifest), runs `cpt-prep check` (must fail the rule) and `cpt-train`
(must exit 2 with that rule's message, before the model loads: output_dir is never created)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pytest
from accelerate.state import AcceleratorState, GradientState

from pipeline.check.rules import RulesConfig
from pipeline.check.run import run_checks
from schemas.manifest import read_manifest, shard_schema
from schemas.verify.results import FAIL
from trainer.cli import main as train_main


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _edit(path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))


def _documents_plus_one(manifest_path):
    def change(raw):
        raw["splits"]["train"]["shards"][0]["num_documents"] += 1
        raw["splits"]["train"]["num_documents"] += 1
        raw["accounting"]["kept"]["train"] += 1
        raw["accounting"]["num_records"] += 1
    _edit(manifest_path, change)


def _totals_do_not_add_up(manifest_path):
    def change(raw):
        raw["accounting"]["num_records"] += 3  # three input records with no outcome
    _edit(manifest_path, change)


def _shard_listed_twice(manifest_path):
    def change(raw):
        train = raw["splits"]["train"]
        shard = train["shards"][0]
        train["shards"].append(dict(shard))
        train["num_documents"] += shard["num_documents"]
        train["num_tokens"] += shard["num_tokens"]
        raw["accounting"]["kept"]["train"] += shard["num_documents"]
        raw["accounting"]["num_records"] += shard["num_documents"]
    _edit(manifest_path, change)


def _shard_copied_under_another_name(manifest_path):
    def change(raw):
        train = raw["splits"]["train"]
        shard = train["shards"][0]
        copy = shard["path"].replace(".arrow", "-copy.arrow")
        shutil.copyfile(manifest_path.parent / shard["path"], manifest_path.parent / copy)
        train["shards"].append({**shard, "path": copy})
        train["num_documents"] += shard["num_documents"]
        train["num_tokens"] += shard["num_tokens"]
        raw["accounting"]["kept"]["train"] += shard["num_documents"]
        raw["accounting"]["num_records"] += shard["num_documents"]
    _edit(manifest_path, change)


def _id_of_four_billion(manifest_path):
    """A valid Arrow stream with the shard schema, one id set to 4,000,000,000; size and sha256 updated."""
    manifest = read_manifest(manifest_path)
    info = manifest.splits["train"].shards[-1]
    path = manifest_path.parent / info.path
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    rows = table.column("input_ids").to_pylist()
    rows[-1][0] = 4_000_000_000
    new = pa.table([pa.array(rows, pa.list_(pa.uint32())), table.column("source_index"), table.column("line")],
                   schema=shard_schema(manifest.token_dtype))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, new.schema) as writer:
        writer.write_table(new)
    data = path.read_bytes()

    def change(raw):
        entry = raw["splits"]["train"]["shards"][-1]
        entry["num_bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    _edit(manifest_path, change)


CASES = {
    "a document count changed by one": (_documents_plus_one, "shard_totals"),
    "accounting totals that do not add up": (_totals_do_not_add_up, "accounting"),
    "the same shard listed twice": (_shard_listed_twice, "shard_listed_once"),
    "a shard copied and listed under another name": (_shard_copied_under_another_name, "shard_listed_once"),
    "a valid shard with id 4,000,000,000, size and sha256 updated": (_id_of_four_billion, "ids_below_vocab"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_trainer_refuses_what_the_check_refuses_before_step_0(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir,
                                                                    capsys, case):
    tamper, rule = CASES[case]
    docs = [qwen_tokenizer.encode(f"document number {i} says something about rivers and stones.") for i in range(40)]
    manifest_path = write_token_dataset(tmp_path / "shards", train=docs, target_bytes=800)  # three shards
    assert len(read_manifest(manifest_path).splits["train"].shards) > 1
    tamper(manifest_path)

    outcome = run_checks(read_manifest(manifest_path), manifest_path, RulesConfig(), sample=0)
    failed = [r for r in outcome.results if r.status == FAIL]
    assert outcome.exit_code(strict=False) == 1 and failed and failed[0].rule == rule, [(r.rule, r.message) for r in failed]

    out = tmp_path / "run"
    capsys.readouterr()
    code = train_main(["--manifest", str(manifest_path), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                       "--max_length", "16", "--max_steps", "2", "--report_to", "none"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert f"fails the structural check {rule}: {failed[0].message}" in lines[0], (lines[0], failed[0].message)
    assert not out.exists(), "cpt-train got past verification (it created output_dir, which happens after the model loads)"
