"""Checkpoints: contents, atomicity (`latest` never picks a partial folder), rotation, and an exact
restore of model, optimizer, scheduler, RNG and the loader position. Real Accelerate, a real tiny
Qwen2 model, real files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from schemas.errors import ConfigError
from schemas.manifest import sha256_file
from trainer import checkpoint as ckpt


@pytest.fixture
def accelerator():
    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _fake_checkpoint(folder, *, step, resumable=True, complete=True):
    """A folder with only a record: enough for the resolver and rotation, which read nothing else."""
    folder.mkdir(parents=True)
    record = {"format": ckpt.CHECKPOINT_FORMAT, "complete": complete, "resumable": resumable, "global_step": step}
    (folder / ckpt.RECORD_NAME).write_text(json.dumps(record))
    return folder


def _setup(accelerator, model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, tokenizer, optimizer, scheduler


def _train_step(model, optimizer, scheduler):
    ids = torch.randint(0, 1000, (2, 16))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_checkpoint_contents_and_restore(tmp_path, accelerator, tiny_model_dir):
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text('{"schema_version": 1}\n')
    model, tokenizer, optimizer, scheduler = _setup(accelerator, tiny_model_dir)
    _train_step(model, optimizer, scheduler)
    loader_state = {"version": 1, "epoch": 0, "batches_done": 6}
    folder = ckpt.save_checkpoint(
        accelerator, model, tokenizer, tmp_path / "out" / "checkpoint-step-3",
        record={"global_step": 3, "epoch": 0.5, "eval_loss": 4.2, "manifest": ckpt.manifest_record(manifest)},
        trainer_state={"global_step": 3, "world_size": 1, "best_eval_loss": 4.2},
        loader_state=loader_state, optimizer=optimizer, scheduler=scheduler,
    )
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", ckpt.RECORD_NAME,
            ckpt.TRAINER_STATE_NAME, "loader_state_rank0.json", ckpt.TRAINING_STATE_DIR} <= names
    state_files = {p.name for p in (folder / ckpt.TRAINING_STATE_DIR).iterdir()}
    assert state_files == {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                           "rng_rank0.safetensors", "rng_rank0.json"}  # no pickle anywhere
    record = ckpt.read_record(folder)
    assert record["complete"] and record["resumable"] and record["global_step"] == 3 and record["eval_loss"] == 4.2
    assert record["manifest"] == {"path": str(manifest.resolve()), "sha256": sha256_file(manifest)}
    assert not list((tmp_path / "out").glob("*.tmp-*"))

    # The model half is a plain transformers folder.
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    expected = accelerator.unwrap_model(model).state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == tokenizer.get_vocab()

    # Remember what must come back, then disturb everything.
    weights = {k: v.clone() for k, v in expected.items()}
    exp_avg = {k: v["exp_avg"].clone() for k, v in optimizer.state_dict()["state"].items()}
    lr = scheduler.get_last_lr()[0]
    rng_draws = (random.random(), np.random.rand(), torch.rand(3))  # the streams right after the save
    _train_step(model, optimizer, scheduler)
    _train_step(model, optimizer, scheduler)
    assert scheduler.get_last_lr()[0] != lr

    trainer_state, restored_loader = ckpt.load_checkpoint(accelerator, folder, model=model, optimizer=optimizer, scheduler=scheduler)
    assert trainer_state["global_step"] == 3 and trainer_state["best_eval_loss"] == 4.2
    assert restored_loader == loader_state
    for name, tensor in accelerator.unwrap_model(model).state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    for k, v in optimizer.state_dict()["state"].items():
        assert torch.equal(v["exp_avg"], exp_avg[k])
    assert scheduler.get_last_lr()[0] == lr
    # RNG: the restored streams continue as they did right after the save.
    assert (random.random(), np.random.rand()) == rng_draws[:2]
    assert torch.equal(torch.rand(3), rng_draws[2])


def test_latest_ignores_partial_and_unmarked_folders(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out / "checkpoint-step-2", step=2)
    _fake_checkpoint(out / "checkpoint-epoch-1", step=4)
    _fake_checkpoint(out / "checkpoint-step-6.tmp-4242", step=6)  # a killed write, record and all
    (out / "checkpoint-step-8").mkdir()  # no completion marker
    _fake_checkpoint(out / "checkpoint-step-9", step=9, complete=False)
    _fake_checkpoint(out / "best_model", step=10, resumable=False)
    assert ckpt.resolve_checkpoint("latest", out) == out / "checkpoint-epoch-1"
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-step-2", "checkpoint-epoch-1"]

    removed = ckpt.remove_stale_tmp(out)
    assert [p.name for p in removed] == ["checkpoint-step-6.tmp-4242"]
    assert not (out / "checkpoint-step-6.tmp-4242").exists()


def test_resolve_checkpoint_errors_are_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match="no complete checkpoint") as info:
        ckpt.resolve_checkpoint("latest", out)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no such folder"):
        ckpt.resolve_checkpoint(str(out / "nope"), out)
    (out / "checkpoint-step-5").mkdir()
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ckpt.resolve_checkpoint(str(out / "checkpoint-step-5"), out)
    final = _fake_checkpoint(out / "final_model", step=5, resumable=False)
    with pytest.raises(ConfigError, match="model only"):
        ckpt.resolve_checkpoint(str(final), out)


def test_rotation_keeps_the_newest_step_checkpoints_and_every_epoch_checkpoint(tmp_path):
    out = tmp_path / "out"
    for step in (10, 20, 30, 40):
        _fake_checkpoint(out / f"checkpoint-step-{step}", step=step)
    _fake_checkpoint(out / "checkpoint-epoch-1", step=15)
    deleted = ckpt.rotate_checkpoints(out, limit=2)
    assert [p.name for p in deleted] == ["checkpoint-step-10", "checkpoint-step-20"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-epoch-1", "checkpoint-step-30", "checkpoint-step-40"]
    assert ckpt.rotate_checkpoints(out, limit=0) == []


def test_exported_model_is_written_in_the_requested_dtype(tmp_path, accelerator, tiny_model_dir):
    """fp32 master weights (as trained under bf16 mixed precision) export as bfloat16 safetensors."""
    from safetensors import safe_open

    model, tokenizer, *_ = _setup(accelerator, str(tiny_model_dir))
    folder = ckpt.save_checkpoint(accelerator, model, tokenizer, tmp_path / "final_model", record={"global_step": 1},
                                  model_dtype=torch.bfloat16)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert next(model.parameters()).dtype == torch.float32  # the live model keeps its fp32 masters
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    assert next(reloaded.parameters()).dtype == torch.bfloat16
