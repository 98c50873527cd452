"""`cpt-prep build` through its CLI on the bundled sample with the real Qwen2 tokenizer: decoding every
shard gives back exactly the kept documents; errors are one line with exit code 2 and no manifest."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.read import expand_inputs, read_documents
from schemas.manifest import DROP_REASONS, open_shard, read_manifest
from schemas.verify.dataset import verify_or_raise

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def kept_rows(folder: Path, manifest, split: str):
    for shard in manifest.splits[split].shards:
        table = open_shard(folder / shard.path)
        yield from zip(table.column("source_index").to_pylist(), table.column("line").to_pylist(), table.column("input_ids").to_pylist())


def test_sample_build_decodes_to_exactly_the_kept_documents(sample_manifest, qwen_tokenizer):
    folder = sample_manifest.parent
    m = read_manifest(sample_manifest)
    verify_or_raise(m, folder)
    assert [Path(i.path).name for i in m.inputs] == ["eval.txt", "train.txt", "extra.jsonl.gz"]
    files = [f for i in m.inputs for f in expand_inputs([i.path], role=i.role)]
    records = {(s, line): (text, reason) for s, line, text, reason in read_documents(files)}
    assert len(records) == m.accounting.num_records
    assert m.accounting.problems() == []

    log = open_shard(folder / m.drop_log.path)
    dropped = dict(zip(zip(log.column("source_index").to_pylist(), log.column("line").to_pylist()), log.column("reason").to_pylist()))
    assert len(dropped) == log.num_rows == sum(m.accounting.dropped.values())
    for reason in ("empty", "too_short", "exact_duplicate", "near_duplicate", "overlaps_eval"):
        assert m.accounting.dropped.get(reason, 0) > 0, f"the sample should exercise {reason}"
    assert set(m.accounting.dropped) <= set(DROP_REASONS)

    sep = m.tokenizer.separator_id
    assert (m.tokenizer.separator_token, sep) == ("<|endoftext|>", 151643)
    controls = set(m.tokenizer.control_token_ids)
    seen = set()
    for split in ("eval", "train"):
        rows = list(kept_rows(folder, m, split))
        assert len(rows) == m.accounting.kept[split] == m.splits[split].num_documents
        provenance = [(s, line) for s, line, _ in rows]
        assert provenance == sorted(provenance)  # input order
        for s, line, ids in rows:
            assert (m.inputs[s].role == "eval") == (split == "eval")
            text, reason = records[(s, line)]
            assert reason is None and (s, line) not in dropped
            assert ids[-1] == sep and not controls & set(ids[:-1])
            assert qwen_tokenizer.decode(ids[:-1]) == unicodedata.normalize("NFC", text)  # Qwen2 normalizes to NFC
            seen.add((s, line))
    # Every record is either kept (exactly once) or in the drop log.
    assert seen | set(dropped) == set(records) and not seen & set(dropped)


def test_every_shard_opens_with_datasets(sample_manifest):
    import datasets

    m = read_manifest(sample_manifest)
    for split, shard in m.all_shards():
        ds = datasets.Dataset.from_file(str(sample_manifest.parent / shard.path))
        assert ds.num_rows == shard.num_documents
        assert set(ds.column_names) == {"input_ids", "source_index", "line"}
    assert datasets.Dataset.from_file(str(sample_manifest.parent / m.drop_log.path)).num_rows == m.drop_log.num_rows


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_summary_and_overrides_from_config_and_flags(tmp_path, capsys, tokenizer_dir):
    config = tmp_path / "cpt_config.json"
    config.write_text(json.dumps({"model": {"tokenizer_name_or_path": str(tokenizer_dir)}, "data": {"min_length": 30}, "training": {"learning_rate": 1e-4}}))
    out = tmp_path / "out"
    code, err = run_cli(["build", str(SAMPLE / "eval.txt"), "--config", str(config), "--output", str(out), "--max_train_samples", "40", "--data.dedup_seed=3", "--workers", "1"], capsys)
    assert code == 0, err
    m = read_manifest(out)
    assert m.config["min_length"] == 30 and m.config["max_train_samples"] == 40 and m.config["dedup_seed"] == 3
    assert m.dedup["seed"] == 3
    assert m.tokenizer.name_or_path == str(tokenizer_dir)  # taken from the config's model section
    assert m.accounting.kept == {"train": 40}
    for label in ("records in", "kept (train)", "dropped: over_max_samples", "tokens", "seconds", "MB/s", "docs/s"):
        assert label in err


def one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_existing_output_needs_overwrite(tmp_path, capsys, tokenizer_dir):
    out = tmp_path / "out"
    argv = ["build", str(SAMPLE / "eval.txt"), "--tokenizer", str(tokenizer_dir), "--output", str(out), "--workers", "1", "--no_progress"]
    assert run_cli(argv, capsys)[0] == 0
    before = (out / "manifest.json").read_bytes()
    one_line_error(*run_cli(argv, capsys), "already exists", "--overwrite")
    assert (out / "manifest.json").read_bytes() == before
    code, err = run_cli(argv + ["--overwrite", "--min_length", "50"], capsys)
    assert code == 0, err
    assert read_manifest(out).config["min_length"] == 50


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["{missing}"], ["input not found", "missing.txt"]),
        (["{csv}"], ["unknown format", ".jsonl"]),
        (["{eval}", "--tokenizer", "{tmp}/no-such-folder"], ["tokenizer folder not found", "--tokenizer"]),
        (["{eval}", "--tokenizer", "no-such-org/no-such-model"], ["not in the Hugging Face cache", "--tokenizer PATH"]),
        (["{eval}", "--min_length", "100000"], ["nothing left in the train split"]),
        (["{eval}", "--eval", "{eval}"], ["both a training and an eval input"]),
        (["{eval}", "--learning_rate", "1e-4"], ["training.learning_rate", "data.* keys"]),
        (["{eval}", "--no_such_key", "1"], ["unknown config key"]),
        (["{eval}", "--min_length", "-3"], ["data.min_length=-3 is invalid"]),
        (["{eval}", "--output", "{csv}/out"], ["not writable", "--output"]),
        (["{eval}", "--eval", "{eval2}", "--eval_fraction", "0.1"], ["use one way"]),
        (["{eval}", "{fifo}"], ["is a FIFO", "stream.txt"]),  # it used to hang, silent
        (["{eval}", "{blob}"], ["blob.txt does not look like text", "--max_binary_fraction 1"]),  # it used to build, exit 0
        (["{eval}", "{jsonl}", "--text_field", "body"], ["first record of", "'content'", "--text_field"]),
    ],
)
def test_errors_are_one_line_exit_2_and_leave_no_manifest(tmp_path, capsys, monkeypatch, tokenizer_dir, args, fragments):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "eval2.txt").write_text("a held-out document that is long enough\n")
    os.mkfifo(tmp_path / "stream.txt")
    (tmp_path / "blob.txt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(50_000)))
    (tmp_path / "docs.jsonl").write_text(json.dumps({"content": "a document long enough to keep"}) + "\n")
    subs = dict(missing=tmp_path / "missing.txt", csv=tmp_path / "x.csv", eval=SAMPLE / "eval.txt", eval2=tmp_path / "eval2.txt", tmp=tmp_path,
                fifo=tmp_path / "stream.txt", blob=tmp_path / "blob.txt", jsonl=tmp_path / "docs.jsonl")
    argv = ["build"] + [a.format(**subs) for a in args]
    if "--tokenizer" not in argv:
        argv += ["--tokenizer", str(tokenizer_dir)]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    code, err = run_cli(argv + ["--workers", "1", "--no_progress"], capsys)
    one_line_error(code, err, *fragments)
    assert not list(tmp_path.rglob("manifest.json"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_default_tokenizer_offline_names_the_bundled_folder(tmp_path, capsys, monkeypatch, tokenizer_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(["build", str(SAMPLE / "eval.txt"), "--output", str(tmp_path / "o")], capsys)
    one_line_error(code, err, "'Qwen/Qwen2.5-7B'", f"--tokenizer {tokenizer_dir}")


def start_build_over_old_output(tmp_path: Path, tokenizer_dir) -> tuple[subprocess.Popen, Path]:
    """`cpt-prep build --workers 2 --overwrite` in a subprocess, on ~10 MB of sample text, into a
    folder whose old manifest must survive an interrupted build. Returns (process, output folder).

    Each copy of the sample shuffles the words (or, in Chinese, the characters) of every line, so
    the copies are not near duplicates: the build tokenizes all ~10 MB and stays interruptible for
    seconds after its first shard is opened, even on a fast or idle machine."""
    corpus = tmp_path / "big.txt"
    lines = (SAMPLE / "train.txt").read_text(encoding="utf-8").splitlines()
    rng = random.Random(0)

    def shuffled(line: str) -> str:
        units = line.split(" ") if " " in line else list(line)
        rng.shuffle(units)
        return (" " if " " in line else "").join(units)

    corpus.write_text("\n".join(line if i == 0 else shuffled(line) for i in range(8) for line in lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"old": true}')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # HF tokenizers (4x slower than the fast backend) keep the tokenize phase ~3 s long here; with
    # the fast backend it lasts ~0.7 s, a thin window on a faster machine.
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus), "--tokenizer", str(tokenizer_dir), "--output", str(out), "--overwrite", "--workers", "2",
           "--tokenizer_backend", "hf"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True), out


def test_ctrl_c_leaves_no_manifest(tmp_path, tokenizer_dir):
    """SIGINT during a real run (console script in a subprocess): exit 130, old output untouched."""
    proc, out = start_build_over_old_output(tmp_path, tokenizer_dir)
    staging = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
        if found and (found[0] / "train").exists():  # shards are being written
            staging = found[0]
            break
        time.sleep(0.05)
    assert staging is not None, "the build finished or failed before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (out / "manifest.json").read_text() == '{"old": true}'
    assert not staging.exists()


INTERRUPTED_EXIT = r"""
import ctypes, sys
import pipeline.cli as cli

def interrupted_main():
    # What an interrupt that reached the interpreter from inside C code leaves behind: CPython then
    # kills itself with SIGINT after its shutdown, whatever exit code the program chose.
    ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 1
    sys.stderr.write("error: interrupted\n")
    return cli.EXIT_INTERRUPTED

cli.main = interrupted_main
cli.entry() if sys.argv[1] == "entry" else sys.exit(cli.main())
"""


def test_console_entry_makes_exit_130_final(tmp_path):
    """The CI failure of an earlier stop (exit -2 after the one-line message), reproduced: a plain
    `sys.exit(main())` dies by SIGINT, the console script's `entry()` exits 130."""
    import ctypes

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except ValueError:
        pytest.skip("this Python does not export _Py_UnhandledKeyboardInterrupt")
    (tmp_path / "interrupted_exit.py").write_text(INTERRUPTED_EXIT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    codes = {how: subprocess.run([sys.executable, "-m", "interrupted_exit", how], cwd=REPO, env=env, capture_output=True, text=True) for how in ("plain", "entry")}
    assert codes["plain"].returncode == -signal.SIGINT  # the mechanism is real on this interpreter
    assert codes["entry"].returncode == 130 and codes["entry"].stderr == "error: interrupted\n"


def _worker_pids(pid: int) -> list[int]:
    """The process pool's workers: the build's child processes other than the resource tracker."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if "resource_tracker" not in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
                    found.append(int(child))
    except OSError:  # a thread or a process ended while we looked
        pass
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_killed_worker_is_a_one_line_error_and_leaves_old_output(tmp_path, tokenizer_dir):
    """A worker killed mid-run (as by the OOM killer): one line naming the fix, exit 2, no manifest."""
    proc, out = start_build_over_old_output(tmp_path, tokenizer_dir)
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and killed is None:
        workers = _worker_pids(proc.pid)
        if workers and [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]:
            time.sleep(0.5)  # let the worker start its tasks
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.05)
    assert killed is not None, "the build finished before a worker could be killed"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: a worker process died") and "fewer --workers" in lines[-1], err
    assert "Traceback" not in err
    assert (out / "manifest.json").read_text() == '{"old": true}'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


def _input_line(path: str, line: int) -> str:
    """Line `line` (1-based) of a sample input, read independently of pipeline.read."""
    import gzip

    raw = gzip.open(path, "rb").read() if path.endswith(".gz") else Path(path).read_bytes()
    text = raw.decode("utf-8").removeprefix("\ufeff").split("\n")[line - 1].removesuffix("\r")
    return json.loads(text)["text"] if ".jsonl" in path else text


def test_dropped_prints_the_dropped_records_with_their_text(sample_manifest, capsys):
    m = read_manifest(sample_manifest)
    shown = 0
    for reason in ("exact_duplicate", "near_duplicate", "too_short"):
        count = m.accounting.dropped.get(reason, 0)
        code = main(["dropped", str(sample_manifest), "--reason", reason, "--limit", "4", "--json"])
        out = capsys.readouterr().out
        assert code == 0
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == min(4, count) and all(r["reason"] == reason for r in records)
        for r in records:
            assert r["text"] == _input_line(r["input"], r["line"]) and r["note"] is None
            if reason != "too_short":  # a duplicate names, and shows, the kept original
                assert r["kept_text"] == _input_line(r["kept_input"], r["kept_line"])
        shown += len(records)
    assert shown >= 6
    code = main(["dropped", str(sample_manifest.parent), "--limit", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len([line for line in out if not line.startswith(" ")]) == 2, out
    with pytest.raises(SystemExit) as info:  # argparse names the reasons there are
        main(["dropped", str(sample_manifest), "--reason", "nonsense"])
    assert info.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_dropped_refuses_to_show_text_of_an_input_changed_since_the_build(tmp_path, capsys, tokenizer_dir):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a first document long enough\nshort\na third document long enough\n")
    assert main(["build", str(corpus), "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "out"), "--workers", "1", "--no_progress"]) == 0
    capsys.readouterr()
    assert main(["dropped", str(tmp_path / "out")]) == 0
    assert "too_short" in (out := capsys.readouterr().out) and "    short" in out
    corpus.write_text("shifted\n" + corpus.read_text())
    assert main(["dropped", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "(text not available)" in out and "changed" in out and "    short" not in out
