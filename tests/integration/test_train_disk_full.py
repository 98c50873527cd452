"""`cpt-train` on a full disk: a checkpoint, a final_model export or a log write that fails for lack of
space is one line naming the folder and the free space, exit 2, and the previous checkpoint stays
whole. The writes really fail: on a small tmpfs mounted in a private user + mount namespace
(`unshare -rm`, no root needed where unprivileged namespaces are allowed; skipped elsewhere), and
under RLIMIT_FSIZE (EFBIG, which schemas.storage counts as full; works anywhere)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from tests.integration.test_resume import _docs
from trainer import checkpoint as ckpt
from trainer.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _argv(manifest, model_dir, out, **overrides) -> list[str]:
    settings = {"model_name_or_path": model_dir, "output_dir": out, "max_length": 32, "batch_size": 1,
                "gradient_accumulation_steps": 1, "max_steps": 2, "save_steps": 2, "logging_steps": 1, "eval_steps": 0,
                "max_eval_batches": 1, "gradient_checkpointing": "false", "report_to": "none", **overrides}
    return ["--manifest", str(manifest), *(arg for key, value in settings.items() for arg in (f"--{key}", str(value)))]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"], capture_output=True).returncode == 0


def _run_on_small_disk(kind: str, argv: list[str], out: Path, tmp_path: Path) -> tuple[int, str, Path]:
    """Run cpt-train with `out` on a small disk; returns (exit code, stderr, a copy of out afterwards)."""
    command = [sys.executable, "-m", "trainer", *argv]
    if kind == "rlimit":
        # 1 MB per file: the run's logs and config fit, the model's 40 MB safetensors do not.
        proc = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, preexec_fn=_limit_file_size(10**6))
        return proc.returncode, proc.stderr, out
    # A tmpfs over `out` holding what is there plus 30 MB: less than one more checkpoint.
    seed, after = tmp_path / "seed", tmp_path / "after"
    shutil.copytree(out, seed)
    used = sum(p.stat().st_size for p in seed.rglob("*") if p.is_file())
    script = (f'mount -t tmpfs -o size={used + 30 * 10**6} tmpfs "{out}" && cp -a "{seed}/." "{out}/" && '
              f'{" ".join(map(_quote, command))}; echo $? > "{tmp_path}/rc"; cp -a "{out}/." "{after}/"')
    after.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    return int((tmp_path / "rc").read_text()), proc.stderr, after


def _quote(arg: str) -> str:
    return "'" + str(arg).replace("'", "'\\''") + "'"


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


@pytest.mark.parametrize("kind", ["tmpfs", "rlimit"])
def test_a_checkpoint_into_a_full_disk_is_one_line_and_the_previous_one_stays(tmp_path, write_token_dataset, qwen_tokenizer,
                                                                                  tiny_model_dir, kind):
    if kind == "tmpfs" and not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    manifest = write_token_dataset(tmp_path / "shards", train=_docs(qwen_tokenizer, 12, seed=1))
    out = tmp_path / "run"
    assert main(_argv(manifest, tiny_model_dir, out, save_total_limit=1)) == 0
    before = _digests(out / "checkpoint-step-2")
    shutil.rmtree(out / "final_model")

    code, stderr, after = _run_on_small_disk(kind, _argv(manifest, tiny_model_dir, out, max_steps=4, save_total_limit=1,
                                                         resume_from_checkpoint="latest"), out, tmp_path)
    line = _error_line(stderr)
    assert code == 2
    assert line.startswith(f"error: the disk is full: writing checkpoint-step-4 into {out} failed (") and "free there" in line, line
    assert _digests(after / "checkpoint-step-2") == before  # the previous checkpoint, byte for byte
    assert [p.name for _, p in ckpt.list_checkpoints(after)] == ["checkpoint-step-2"]
    assert not list(after.glob("*.tmp-*")) and not list(after.glob("*.old-*"))


def test_a_final_model_export_into_a_full_disk_is_one_line(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir):
    manifest = write_token_dataset(tmp_path / "shards", train=_docs(qwen_tokenizer, 12, seed=1))
    out = tmp_path / "run"
    code, stderr, after = _run_on_small_disk("rlimit", _argv(manifest, tiny_model_dir, out, save_steps=0), out, tmp_path)
    line = _error_line(stderr)
    assert code == 2
    assert line.startswith(f"error: the disk is full: writing final_model into {out} failed ("), line
    assert not (after / "final_model").exists() and not list(after.glob("*.tmp-*"))


def test_a_log_write_into_a_full_disk_is_one_line(tmp_path):
    """metrics.jsonl grows one record per logging step; past the limit the write fails for real."""
    script = (
        "from pathlib import Path\n"
        "from accelerate import Accelerator\n"
        "from schemas.errors import CptError\n"
        "from trainer.logs import MetricsLog\n"
        f"log = MetricsLog(Path({str(tmp_path / 'logs')!r}), accelerator=Accelerator(cpu=True), resume_step=None, track=False)\n"
        "try:\n"
        "    for step in range(10_000):\n"
        "        log.write({'step': step, 'loss': 1.0, 'note': 'x' * 100})\n"
        "except CptError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          preexec_fn=_limit_file_size(20_000))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"the disk is full: writing metrics.jsonl into {tmp_path / 'logs'} failed"), proc.stdout
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
