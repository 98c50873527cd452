"""Evaluation on each source's eval split: token-weighted loss and perplexity, per source and combined.

- loss = (sum of next-token cross-entropies over every scored eval token, all processes)
  / (number of scored tokens), so the figure does not depend on batch size, process count or where
  the windows are cut; perplexity = exp(loss).
- Each process scores its own disjoint eval windows (WindowLoader, shuffle off; padding windows
  score nothing); the two sums are all-reduced once at the end.
- `max_batches` > 0 caps the batches per process (a quicker, noisier figure on a large eval split).
- The model goes back to train mode afterwards; no gradient is kept.
- Progress: a bar per source (`eval <name>`, batches, stderr, rank 0) under the training bar, which
  leaves eval time out of its rate and ETA (`trainer.logs.paused`).
- A mixture: every source with an eval split is evaluated (`max_batches` per source, so N sources
  cost at most N x max_batches batches), giving `eval_loss/<name>`. The combined `eval_loss` is
  sum(w_i L_i) / sum(w_i) over the sources with weight w_i > 0 and an eval split: the expected loss
  per training token under the mixture. A source without an eval split is left out and the others'
  weights renormalised; an eval-only source (weight 0) gets its own figure and no share of the
  combined one. With one source, eval_loss is its eval loss.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

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


def evaluate(accelerator, model, windows: PackedWindows, *, batch_size: int, max_batches: int = 0, label: str = "") -> EvalResult:
    """Token-weighted eval loss and perplexity over `windows` (every process must call it)."""
    from tqdm.auto import tqdm

    loader = WindowLoader(windows, batch_size=batch_size, rank=accelerator.process_index, world_size=accelerator.num_processes)
    num_batches = min(len(loader), max_batches) if max_batches else len(loader)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    bar = tqdm(total=num_batches, desc=f"eval {label}".strip(), unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    with torch.no_grad(), bar:
        for i, batch in enumerate(loader):
            if i >= num_batches:
                break
            loss_sum, num_tokens = causal_lm_loss_sum(model, to_device(batch, accelerator.device))
            totals[0] += loss_sum.double()
            totals[1] += num_tokens
            bar.update(1)
    if was_training:
        model.train()
    totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, num_tokens = float(totals[0]), int(totals[1])
    if num_tokens == 0:
        return EvalResult(loss=float("nan"), perplexity=float("nan"), num_tokens=0)
    loss = loss_sum / num_tokens
    return EvalResult(loss=loss, perplexity=perplexity(loss), num_tokens=num_tokens)


@dataclass(frozen=True)
class MixtureEval:
    """One evaluation of every source that has an eval split."""

    per_source: dict[str, EvalResult]
    loss: Optional[float]  # combined: weighted by the mixture (None when no trained source has eval data)
    num_tokens: int  # scored tokens, all sources, all processes

    def metrics(self) -> dict[str, float]:
        """The metrics.jsonl fields: eval_loss, eval_ppl, eval_tokens and eval_loss/<name>."""
        out: dict[str, float] = {}
        if self.loss is not None:
            out.update(eval_loss=self.loss, eval_ppl=perplexity(self.loss))
        out["eval_tokens"] = self.num_tokens
        out.update({f"eval_loss/{name}": r.loss for name, r in self.per_source.items()})
        return out


def combined_loss(per_source: dict[str, EvalResult], weights: dict[str, float]) -> Optional[float]:
    """sum(w L) / sum(w) over the sources with a weight > 0 and scored eval tokens."""
    used = {name: w for name, w in weights.items() if w > 0 and name in per_source and per_source[name].num_tokens > 0}
    if not used:
        return None
    return sum(w * per_source[name].loss for name, w in used.items()) / sum(used.values())


def evaluate_sources(accelerator, model, sources: Sequence[tuple[str, float, PackedWindows]], *, batch_size: int,
                     max_batches: int = 0) -> MixtureEval:
    """Evaluate every `(name, weight, eval windows)`; every process must call it."""
    per_source = {name: evaluate(accelerator, model, windows, batch_size=batch_size, max_batches=max_batches, label=name)
                  for name, _, windows in sources}
    weights = {name: weight for name, weight, _ in sources}
    return MixtureEval(per_source, combined_loss(per_source, weights), sum(r.num_tokens for r in per_source.values()))
