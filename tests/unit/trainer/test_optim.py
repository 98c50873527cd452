"""Unit tests of the step plan and the optimizer's parameter groups (trainer.optim)."""

from __future__ import annotations

import torch

from schemas.config import load_config
from trainer.optim import build_optimizer, is_no_decay, plan_steps


def test_plan_steps_rounds_up_partial_accumulation_and_fractional_epochs():
    cfg = load_config(None).with_overrides({"gradient_accumulation_steps": 4, "num_train_epochs": 1.5, "warmup_ratio": 0.1})
    plan = plan_steps(cfg.training, batches_per_epoch=10)
    assert plan.steps_per_epoch == 3  # 4 + 4 + 2 micro-batches
    assert plan.total_steps == 5  # ceil(1.5 * 3)
    assert plan.num_epochs == 2
    assert plan.warmup_steps == 1  # ceil(0.1 * 5)
    fixed = plan_steps(cfg.with_overrides({"max_steps": 7}).training, batches_per_epoch=10)
    assert fixed.total_steps == 7 and fixed.num_epochs == 3


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

