"""Exact resume: a `cpt-train` run killed with SIGKILL after a checkpoint and resumed with
`--resume_from_checkpoint latest` logs the same per-step losses, learning rates, grad norms, eval
losses and tokens per source as an uninterrupted run (CPU, fp32, tiny Qwen2 model), across an epoch
boundary; with one manifest, and with a two-source mixture whose small source starts a new pass
after the kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from trainer import checkpoint as ckpt
from trainer.cli import main
from trainer.logs import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPARED = ("loss", "lr", "grad_norm", "eval_loss", "epoch", "num_tokens")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _docs(tokenizer, num_docs: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    words = ["river", "stone", "light", "green", "north", "bread", "quiet", "paper", "salt", "wind"]
    return [tokenizer.encode(" ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))) for _ in range(num_docs)]


def _argv(manifests, model_dir, out) -> list[str]:
    settings = {
        "model_name_or_path": model_dir, "output_dir": out, "max_length": 32, "batch_size": 1,
        "gradient_accumulation_steps": 2, "max_steps": 6, "learning_rate": 3e-3, "warmup_ratio": 0.2,
        "save_steps": 3, "save_total_limit": 2, "logging_steps": 1, "eval_steps": 0, "max_eval_batches": 1,
        "gradient_checkpointing": "false", "report_to": "none",
    }
    argv = [arg for path in manifests for arg in ("--manifest", str(path))]
    if len(manifests) > 1:
        settings["mixture_weights"] = "0.7,0.3"
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def _by_step(records: list[dict]) -> dict[int, dict]:
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k in COMPARED or k.startswith(("tokens/", "eval_loss/"))} for r in records}


@pytest.mark.parametrize("sources", ["one manifest", "mixture"])
def test_sigkill_then_resume_latest_logs_the_same_losses(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir, sources):
    # The first source gets 0.7 of the windows in the mixture, so it is smaller there to end a pass in 6 steps.
    num_docs = 14 if sources == "one manifest" else 10
    manifests = [write_token_dataset(tmp_path / "shards", train=_docs(qwen_tokenizer, num_docs, seed=3), eval=_docs(qwen_tokenizer, 2, seed=4))]
    if sources == "mixture":
        # 4 documents make 2 windows: at 0.3 of 2 windows per step, a new pass starts after step 3.
        manifests.append(write_token_dataset(tmp_path / "general", train=_docs(qwen_tokenizer, 4, seed=5), eval=_docs(qwen_tokenizer, 2, seed=6)))

    reference_out = tmp_path / "reference"
    assert main(_argv(manifests, tiny_model_dir, reference_out)) == 0
    reference = _by_step(read_metrics(reference_out / "logs" / "metrics.jsonl"))
    assert sorted(reference) == list(range(7))
    epochs = [r["epoch"] for _, r in sorted(reference.items())]
    assert epochs[3] < 1 <= epochs[-1], f"the resumed part should cross the first source's epoch boundary: {epochs}"
    if sources == "mixture":
        assert all("eval_loss/general" in r for s, r in reference.items() if "eval_loss" in r)
        assert reference[6]["tokens/general"] > 3 * 32 > reference[3]["tokens/general"]  # general's second pass is after the kill

    # The same run in a subprocess, killed (SIGKILL: no cleanup at all) once checkpoint-step-3 is whole;
    # 14 documents make about 4.5 steps per epoch, so the resumed part crosses the epoch boundary.
    out = tmp_path / "killed"
    marker = out / "checkpoint-step-3" / ckpt.RECORD_NAME
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *_argv(manifests, tiny_model_dir, out)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    assert not (out / "final_model").exists(), "the run finished before it could be killed"
    killed_at = ckpt.list_checkpoints(out)[-1][0]
    assert 3 <= killed_at < 6

    assert main([*_argv(manifests, tiny_model_dir, out), "--resume_from_checkpoint", "latest"]) == 0
    resumed = _by_step(read_metrics(out / "logs" / "metrics.jsonl"))
    assert sorted(resumed) == sorted(reference)
    for step, expected in reference.items():
        for key, value in expected.items():
            if value is None:
                assert resumed[step][key] is None, (step, key)
            else:
                assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (step, key, resumed[step][key], value)
    assert (out / "final_model" / "model.safetensors").exists()
    assert not list(out.glob("*.tmp-*")), "a partial checkpoint folder survived the resume"
