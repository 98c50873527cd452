"""Run logs under `output_dir/logs/`: metrics JSONL, TensorBoard (Accelerate trackers), loss-curve PNG.

- `metrics.jsonl`: one JSON object per line, written by rank 0 and flushed per line. A train record
  (every `logging_steps`) has step, epoch, loss (token-weighted mean over the steps since the last
  record), lr, grad_norm, tokens_per_s, num_tokens; a record at an evaluation adds eval_loss and
  eval_ppl (step 0 holds only the base model's eval). On resume from step S, records after S are
  dropped first, so the file reads as one uninterrupted run.
- TensorBoard (and any other `report_to` tracker) gets the same numbers through `accelerator.log`;
  on resume TensorBoard purges events after S (`purge_step`).
- Train time (tokens/s) is wall-clock time minus eval and checkpoint time, read after a device sync.
- `loss_curve.png` (matplotlib, Agg backend: no display needed) is drawn from metrics.jsonl at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
LOSS_CURVE_NAME = "loss_curve.png"
TRACKER_PROJECT = "cpt-train"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a torn last line, from a killed run, is skipped)."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class MetricsLog:
    """Appends records to metrics.jsonl (rank 0 only) and forwards them to Accelerate's trackers."""

    def __init__(self, logs_dir: Path, *, accelerator, resume_step: Optional[int]) -> None:
        self.accelerator = accelerator
        self.path = Path(logs_dir) / METRICS_NAME
        self._file = None
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
                tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
                tmp.replace(self.path)
            elif self.path.exists():
                self.path.unlink()  # a fresh run in a reused output_dir (overwrite_output_dir)
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        numbers = {k: v for k, v in record.items() if k not in ("step",) and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TrainInterval:
    """Train metrics since the last log record. Time is wall-clock time minus the eval and save time
    spent meanwhile, read after the loss is fetched (a device sync), so asynchronous GPU work of the
    interval's steps is counted in full and batch loading is included."""

    def __init__(self, timers: dict[str, float]) -> None:
        self.timers = timers
        self._reset()

    def _reset(self) -> None:
        self.loss: Optional[torch.Tensor] = None
        self.grad_norm: Optional[torch.Tensor] = None
        self.steps, self.num_tokens = 0, 0
        self.started, self.excluded_at_start = time.perf_counter(), self.timers["eval"] + self.timers["save"]

    def add(self, loss_share: torch.Tensor, grad_norm: torch.Tensor, num_tokens: int) -> None:
        self.loss = loss_share if self.loss is None else self.loss + loss_share
        self.grad_norm, self.steps, self.num_tokens = grad_norm, self.steps + 1, self.num_tokens + num_tokens

    def flush(self, acc) -> dict[str, float]:
        """Mean loss over the interval's steps (one all-reduce), last grad norm, tokens/s; then reset."""
        loss = float(acc.reduce(self.loss.detach().clone(), reduction="sum") if acc.num_processes > 1 else self.loss)
        grad_norm = float(self.grad_norm) if self.grad_norm is not None else float("nan")
        seconds = time.perf_counter() - self.started - (self.timers["eval"] + self.timers["save"] - self.excluded_at_start)
        self.timers["train"] += seconds
        out = {"loss": loss / self.steps, "grad_norm": grad_norm, "tokens_per_s": self.num_tokens / max(seconds, 1e-9),
               "step_time_s": seconds / self.steps}
        self._reset()
        return out


def init_trackers(accelerator, config_dict: dict[str, Any], *, resume_step: Optional[int]) -> None:
    """Start the `report_to` trackers (TensorBoard under logs/) with the flattened config."""
    if not accelerator.log_with:
        return
    flat = {f"{section}.{key}": value for section, values in config_dict.items() for key, value in values.items()}
    hparams = {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))}
    init_kwargs = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step is not None else {}
    accelerator.init_trackers(TRACKER_PROJECT, config=hparams, init_kwargs=init_kwargs)


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Optional[Path]:
    """Train loss and eval loss against step, from metrics.jsonl; None when there is nothing to plot."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and math.isfinite(r["eval_loss"])]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("cpt-train loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png_path)
    return png_path


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The end-of-run summary as a few human lines."""
    def loss(value: Optional[float]) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"

    def ppl(value: Optional[float]) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{math.exp(value):.2f}"

    return [
        f"steps: {summary['global_step']} of {summary['total_steps']} ({summary['steps_this_run']} in this run), epochs: {summary['epoch']:.2f}",
        f"tokens: {summary['num_tokens']:,} trained in this run ({summary['num_tokens_total']:,} in total)",
        f"time: {summary['wall_s']:.1f} s (train {summary['train_s']:.1f} s, eval {summary['eval_s']:.1f} s, checkpoints {summary['save_s']:.1f} s)",
        f"throughput: {summary['tokens_per_s']:,.0f} tokens/s ({summary['num_processes']} process(es))",
        f"eval loss: {loss(summary['initial_eval_loss'])} -> {loss(summary['final_eval_loss'])} "
        f"(perplexity {ppl(summary['initial_eval_loss'])} -> {ppl(summary['final_eval_loss'])}); best {loss(summary['best_eval_loss'])}",
        f"outputs: {summary['output_dir']} (final_model/, logs/metrics.jsonl, logs/loss_curve.png)",
    ]
