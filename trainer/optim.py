"""Optimizer, schedule and step arithmetic, built from `TrainingConfig`.

- AdamW with two parameter groups: weight decay on matrices (linear and embedding weights), none on
  biases and norm weights (1-D parameters, or names ending in `bias` / inside a `*norm` module), as
  in GPT-2/nanoGPT and HF Trainer. Decay on a norm's gain pulls it towards 0, not towards 1.
- The schedule is transformers' `get_scheduler(lr_scheduler_type)` with
  `num_warmup_steps = ceil(warmup_ratio * total_steps)`; it is stepped once per optimizer step by
  the loop (not by Accelerate, whose wrapper steps it once per process).
- Steps: one optimizer step = `gradient_accumulation_steps` micro-batches (the last step of an epoch
  may have fewer); `total_steps = max_steps` when > 0, else `ceil(num_train_epochs * steps_per_epoch)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from schemas.config import TrainingConfig
from schemas.errors import ConfigError

# Wrapper prefixes that FSDP / activation checkpointing / DDP / torch.compile insert into names.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run makes."""

    batches_per_epoch: int  # micro-batches per epoch on each process
    steps_per_epoch: int
    total_steps: int
    num_epochs: int  # epochs started (the last may stop early)
    warmup_steps: int


def plan_steps(config: TrainingConfig, *, batches_per_epoch: int) -> StepPlan:
    """Step counts from the loader length and the config."""
    if batches_per_epoch < 1:
        raise ConfigError("the train split gives no batch on this process; lower model.max_length or add data")
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    if config.max_steps > 0:
        total = config.max_steps
    else:
        total = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
    return StepPlan(
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        num_epochs=math.ceil(total / steps_per_epoch),
        warmup_steps=math.ceil(config.warmup_ratio * total),
    )


def clean_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases and norm weights, which get no weight decay (decided on the unwrapped model:
    FSDP1 flattens parameters, so shapes seen after wrapping mean nothing)."""
    name = clean_name(name)
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1].lower() if "." in name else ""
    return param.ndim < 2 or name.endswith("bias") or "norm" in module


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Clean names of the parameters that get no weight decay; call before any wrapping."""
    return {clean_name(n) for n, p in model.named_parameters() if is_no_decay(n, p)}


def parameter_groups(model: torch.nn.Module, *, weight_decay: float, no_decay: set[str] | None = None) -> list[dict]:
    """[decayed, not decayed] trainable parameters (empty groups left out)."""
    no_decay = no_decay_names(model) if no_decay is None else no_decay
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if clean_name(name) in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: TrainingConfig, *, no_decay: set[str] | None = None) -> torch.optim.AdamW:
    """AdamW over `parameter_groups` with the config's lr, betas, eps and weight decay."""
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay=config.weight_decay, no_decay=no_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, plan: StepPlan):
    """transformers' scheduler `lr_scheduler_type` with linear warmup over `plan.warmup_steps`."""
    try:
        return get_scheduler(
            config.lr_scheduler_type,
            optimizer,
            num_warmup_steps=plan.warmup_steps,
            num_training_steps=plan.total_steps,
        )
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"training.lr_scheduler_type={config.lr_scheduler_type!r} is not usable ({exc}); use cosine, linear, constant_with_warmup or another transformers scheduler name") from None
