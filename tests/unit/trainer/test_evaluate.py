"""Eval (trainer.evaluate): a progress bar per source while it runs, and the figure it shows."""

from __future__ import annotations

import numpy as np
from transformers import AutoModelForCausalLM

from schemas.manifest import read_manifest
from tests.unit.trainer.test_checkpoint import accelerator  # noqa: F401 (the CPU Accelerator fixture)
from trainer.data import PackedWindows, WindowLoader
from trainer.evaluate import evaluate


def test_eval_shows_its_progress_per_source(tmp_path, write_token_dataset, tiny_model_dir, accelerator, capsys):  # noqa: F811
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, size=int(rng.integers(5, 30))).tolist() for _ in range(40)]
    path = write_token_dataset(tmp_path / "shards", train=docs, eval=docs)
    windows = PackedWindows(read_manifest(path), path.parent, "eval", max_length=16)
    batches = len(WindowLoader(windows, batch_size=4))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    capsys.readouterr()
    result = evaluate(accelerator, model, windows, batch_size=4, max_batches=batches - 1, label="domain")
    err = capsys.readouterr().err
    assert "eval domain" in err and f"/{batches - 1}" in err, err  # the bar counts the batches this eval scores
    assert result.num_tokens > 0
