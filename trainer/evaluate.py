"""Evaluation on the manifest's eval split: token-weighted loss and perplexity.

- loss = (sum of next-token cross-entropies over every scored eval token, all processes)
  / (number of scored tokens), so the figure does not depend on batch size, process count or where
  the windows are cut; perplexity = exp(loss).
- Each process scores its own disjoint eval windows (WindowLoader, shuffle off; padding windows
  score nothing); the two sums are all-reduced once at the end.
- `max_batches` > 0 caps the batches per process (a quicker, noisier figure on a large eval split).
- The model goes back to train mode afterwards; no gradient is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.data import PackedWindows, WindowLoader
from trainer.modeling import causal_lm_loss_sum


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    num_tokens: int  # scored tokens, all processes


def perplexity(loss: float) -> float:
    """exp(loss), inf when it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def evaluate(accelerator, model, windows: PackedWindows, *, batch_size: int, max_batches: int = 0) -> EvalResult:
    """Token-weighted eval loss and perplexity over `windows` (every process must call it)."""
    # A fresh loader each time: a WindowLoader remembers its position, so a used one yields nothing.
    loader = WindowLoader(
        windows,
        batch_size=batch_size,
        seed=0,
        shuffle=False,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            loss_sum, num_tokens = causal_lm_loss_sum(model, to_device(batch, accelerator.device))
            totals[0] += loss_sum.double()
            totals[1] += num_tokens
    if was_training:
        model.train()
    totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, num_tokens = float(totals[0]), int(totals[1])
    if num_tokens == 0:
        return EvalResult(loss=float("nan"), perplexity=float("nan"), num_tokens=0)
    loss = loss_sum / num_tokens
    return EvalResult(loss=loss, perplexity=perplexity(loss), num_tokens=num_tokens)
