"""Unit tests of the step plan, each learning-rate schedule's values against its formula, and the
optimizer's parameter groups (trainer.optim)."""

from __future__ import annotations

import math

import pytest
import torch

from schemas.config import load_config
from schemas.errors import ConfigError
from trainer.optim import build_optimizer, build_scheduler, is_no_decay, plan_steps


def _plan(overrides, *, windows_per_step=4, first_source_windows=30, first_source_weight=1.0):
    cfg = load_config(None).with_overrides(overrides)
    return plan_steps(cfg.training, windows_per_step=windows_per_step, max_length=16,
                      first_source_windows=first_source_windows, first_source_weight=first_source_weight)


def test_run_length_max_steps_wins_then_max_tokens_then_epochs_of_the_first_source():
    by_epochs = _plan({"num_train_epochs": 2, "warmup_ratio": 0.1}, first_source_weight=0.75)
    # 30 windows of the first source at 0.75 x 4 windows per step: 10 steps per pass.
    assert (by_epochs.total_steps, by_epochs.decided_by, by_epochs.steps_per_epoch) == (20, "num_train_epochs", 10)
    assert by_epochs.warmup_steps == 2 and by_epochs.tokens_per_step == 64
    assert _plan({"num_train_epochs": 1.5}).total_steps == math.ceil(1.5 * 30 / 4)
    by_tokens = _plan({"num_train_epochs": 2, "max_tokens": 1000})
    assert (by_tokens.total_steps, by_tokens.decided_by) == (16, "max_tokens")  # ceil(1000 / 64)
    by_steps = _plan({"num_train_epochs": 2, "max_tokens": 1000, "max_steps": 7})
    assert (by_steps.total_steps, by_steps.decided_by) == (7, "max_steps")
    assert _plan({"max_steps": 50, "warmup_ratio": 0.1, "warmup_steps": 3}).warmup_steps == 3  # absolute steps override the ratio
    assert _plan({"max_steps": 50, "warmup_steps": 0}).warmup_steps == 0
    with pytest.raises(ConfigError, match="warmup steps exceed"):
        _plan({"max_steps": 5, "warmup_steps": 6})
    with pytest.raises(ConfigError, match="warmup \\+ decay"):
        _plan({"max_steps": 10, "warmup_steps": 5, "lr_scheduler_type": "warmup_stable_decay", "decay_ratio": 0.6})


T, W, LR = 100, 10, 1e-3


def _reference(kind: str, t: int, *, floor: float, decay_type: str = "linear", decay_steps: int = 20) -> float:
    """The multiplier of the learning rate at scheduler step t, written from the formulas."""
    if kind == "constant":
        return 1.0
    if kind == "warmup_stable_decay":
        if t < W:
            return floor + (1 - floor) * t / W
        if t < T - decay_steps:
            return 1.0
        if t >= T:
            return floor
        p = (t - (T - decay_steps)) / decay_steps
        g = {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}[decay_type]
        return floor + (1 - floor) * g
    if t < W:
        return t / W
    if kind == "constant_with_warmup":
        return 1.0
    progress = (t - W) / (T - W)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return floor + (1 - floor) * shape


@pytest.mark.parametrize("kind, floor, decay_type", [
    ("cosine", 0.0, None), ("cosine", 0.1, None), ("linear", 0.0, None), ("linear", 0.2, None),
    ("warmup_stable_decay", 0.0, "linear"), ("warmup_stable_decay", 0.1, "cosine"), ("warmup_stable_decay", 0.05, "1-sqrt"),
    ("constant_with_warmup", 0.0, None), ("constant", 0.0, None),
])
def test_each_schedule_follows_its_formula(kind, floor, decay_type):
    overrides = {"max_steps": T, "warmup_steps": W, "learning_rate": LR, "lr_scheduler_type": kind, "min_lr_ratio": floor}
    if decay_type:
        overrides.update(decay_type=decay_type, decay_ratio=0.2)
    cfg = load_config(None).with_overrides(overrides)
    plan = plan_steps(cfg.training, windows_per_step=1, max_length=16, first_source_windows=10)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=LR)
    scheduler = build_scheduler(optimizer, cfg.training, plan)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(T):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    for t in (0, 1, 5, 9, 10, 11, 40, 79, 80, 81, 90, 99, 100):
        want = LR * _reference(kind, t, floor=floor, decay_type=decay_type or "linear")
        assert lrs[t] == pytest.approx(want, rel=1e-9, abs=1e-15), (kind, t, lrs[t], want)
    if kind != "constant":
        assert max(lrs) == pytest.approx(LR)
    if floor and kind in ("cosine", "linear", "warmup_stable_decay"):
        assert min(lrs[W:]) == pytest.approx(floor * LR)  # the floor holds to the end


def test_no_weight_decay_on_biases_and_norms(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = load_config(None).with_overrides({"weight_decay": 0.1, "adam_beta2": 0.99, "adam_epsilon": 1e-6})
    optimizer = build_optimizer(model, cfg.training)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "model.layers.0.self_attn.q_proj.weight" in decayed_names
    assert "model.embed_tokens.weight" in decayed_names
    assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight", "model.norm.weight"} <= plain_names
    assert not any(n.endswith("bias") or "norm" in n for n in decayed_names)
    assert decayed["betas"] == (0.9, 0.99) and decayed["eps"] == 1e-6
    assert len(decayed_names) + len(plain_names) == len(names)
    # Names as FSDP/DDP wrappers print them are classified the same way.
    assert is_no_decay("_fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.post_attention_layernorm.weight", torch.zeros(4, 4))

