"""Optimizer, schedule and step arithmetic, built from `TrainingConfig`.

- AdamW with two parameter groups: weight decay on matrices (linear and embedding weights), none on
  biases and norm weights (1-D parameters, or names ending in `bias` / inside a `*norm` module), as
  in GPT-2/nanoGPT and HF Trainer. Decay on a norm's gain pulls it towards 0, not towards 1.
- Length of the run (`plan_steps`), the first rule that applies: `max_steps` > 0; else `max_tokens`
  > 0, ceil(max_tokens / tokens per step); else `num_train_epochs` passes over the first source,
  ceil(epochs x its windows / (its weight x windows per step)). Every step holds the same number of
  windows (a source that runs out continues with its next pass inside the step).
- Warmup: `warmup_steps` when set, else ceil(warmup_ratio x total steps).
- The schedule is transformers' (`get_scheduler`), stepped once per optimizer step by the loop (not
  by Accelerate, whose wrapper steps it once per process). With f = min_lr_ratio, W = warmup steps,
  T = total steps, D = decay steps, the multiplier of learning_rate at scheduler step t >= W is:
  cosine `f + (1-f) (1 + cos(pi (t-W)/(T-W)))/2` (`cosine_with_min_lr` when f > 0);
  linear `f + (1-f) (T-t)/(T-W)` (`polynomial` with power 1 and lr_end = f x lr when f > 0);
  warmup_stable_decay 1 until T-D, then `f + (1-f) g(p)`, p = (t-(T-D))/D, g = 1-p (linear),
  (1+cos(pi p))/2 (cosine) or 1-sqrt(p) (1-sqrt); constant_with_warmup 1. Warmup is linear from 0
  (warmup_stable_decay: from f, as transformers does); `constant` has no warmup.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from schemas.config import TrainingConfig
from schemas.errors import ConfigError

logger = logging.getLogger(__name__)

# Wrapper prefixes that FSDP / activation checkpointing / DDP / torch.compile insert into names.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run makes, and what decided it."""

    total_steps: int
    warmup_steps: int
    windows_per_step: int  # all processes
    tokens_per_step: int  # all processes
    steps_per_epoch: float  # optimizer steps per pass over the first source
    decided_by: str  # max_steps, max_tokens or num_train_epochs
    decay_steps: int = 0  # warmup_stable_decay's final decay

    @property
    def num_epochs(self) -> float:
        """Passes over the first source the run makes."""
        return self.total_steps / self.steps_per_epoch


def plan_steps(config: TrainingConfig, *, windows_per_step: int, max_length: int, first_source_windows: int,
               first_source_weight: float = 1.0) -> StepPlan:
    """Step counts from the config, the step's shape and the first source's size and weight."""
    if windows_per_step < 1 or first_source_windows < 1:
        raise ConfigError("the first source gives no training window; lower model.max_length or add data")
    tokens_per_step = windows_per_step * max_length
    steps_per_epoch = first_source_windows / (first_source_weight * windows_per_step)
    if config.max_steps > 0:
        total, decided_by = config.max_steps, "max_steps"
    elif config.max_tokens > 0:
        total, decided_by = math.ceil(config.max_tokens / tokens_per_step), "max_tokens"
    else:
        # round() first: 3 x 10 windows / 2 per step is 15.000000000000002 in floating point.
        total, decided_by = max(1, math.ceil(round(config.num_train_epochs * steps_per_epoch, 9))), "num_train_epochs"
    warmup = config.warmup_steps if config.warmup_steps is not None else math.ceil(config.warmup_ratio * total)
    if warmup > total:
        raise ConfigError(f"{warmup} warmup steps exceed the run's {total} optimizer steps; lower training.warmup_steps / warmup_ratio or lengthen the run")
    decay = 0
    if config.lr_scheduler_type == "warmup_stable_decay":
        decay = max(1, round(config.decay_ratio * total))
        if warmup + decay > total:
            raise ConfigError(
                f"warmup_stable_decay needs warmup + decay <= the run's {total} steps, got {warmup} + {decay}; "
                "lower training.decay_ratio or the warmup, or lengthen the run"
            )
    return StepPlan(total_steps=total, warmup_steps=warmup, windows_per_step=windows_per_step, tokens_per_step=tokens_per_step,
                    steps_per_epoch=steps_per_epoch, decided_by=decided_by, decay_steps=decay)


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


def build_optimizer(model: torch.nn.Module, config: TrainingConfig, *, no_decay: set[str] | None = None,
                    device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW over `parameter_groups` with the config's lr, betas, eps and weight decay; its fused
    kernel (`fused_adamw`) on CUDA, where it replaces a dozen foreach launches per parameter group
    with one (the same update up to rounding), else the default (foreach) implementation."""
    fused = config.fused_adamw and device_type == "cuda"
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay=config.weight_decay, no_decay=no_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        fused=fused or None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, plan: StepPlan):
    """The transformers scheduler for `lr_scheduler_type` with `min_lr_ratio` as its floor (see the
    module docstring for each shape's formula)."""
    kind, floor = config.lr_scheduler_type, config.min_lr_ratio
    name, extra = kind, {}
    if kind == "cosine" and floor > 0:
        name, extra = "cosine_with_min_lr", {"min_lr_rate": floor}
    elif kind == "linear" and floor > 0:
        name, extra = "polynomial", {"lr_end": floor * config.learning_rate, "power": 1.0}
    elif kind == "warmup_stable_decay":
        extra = {"num_decay_steps": plan.decay_steps, "decay_type": config.decay_type, "min_lr_ratio": floor}
    elif kind in ("constant_with_warmup", "constant") and floor > 0:
        logger.info("training.min_lr_ratio has no effect on %s: the learning rate never decays", kind)
    if kind == "constant" and plan.warmup_steps:
        logger.info("lr_scheduler_type=constant has no warmup (%d warmup steps ignored); use constant_with_warmup for one", plan.warmup_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps,
                         scheduler_specific_kwargs=extra)
