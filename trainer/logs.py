"""Run logs under `output_dir/logs/`: metrics JSONL, TensorBoard (Accelerate trackers), loss-curve PNG.

- `metrics.jsonl`: one JSON object per line, written by rank 0 and flushed per line. A train record
  (every `logging_steps`) has step, epoch, loss (token-weighted mean over the applied steps since
  the last record; null when all were skipped), lr, grad_norm, tokens_per_s, mfu (where the device's
  peak is known: trainer/flops.py), step_time_s,
  num_tokens, `tokens/<name>` per source (drawn so far, all processes) and skipped_steps (so far);
  a record at an evaluation adds eval_loss, eval_ppl, eval_tokens and `eval_loss/<name>` per source
  (step 0 holds only the base model's eval). On resume from step S, records after S are dropped
  first, so the file reads as one uninterrupted run.
- `skipped_steps.jsonl`: one record per skipped optimizer step (step, reason, loss, grad_norm,
  windows by source), truncated on resume the same way.
- TensorBoard (and any other `report_to` tracker) gets the same numbers through `accelerator.log`;
  on resume TensorBoard purges events after S (`purge_step`).
- Train time (tokens/s) is wall-clock time minus eval and checkpoint time, read after a device sync.
- `loss_curve.png` (matplotlib, Agg backend: no display needed) is drawn from metrics.jsonl at the end.
- The step progress bar's rate and ETA count training only: eval and checkpoint time is taken out
  of them (`paused`), so a 2-minute eval at step 0 does not make the ETA read hours.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from schemas.errors import CptError
from schemas.storage import full_disk_as_error

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
SKIPPED_NAME = "skipped_steps.jsonl"
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
    """Appends records to a JSONL file (rank 0 only) and forwards their numbers to Accelerate's trackers."""

    def __init__(self, logs_dir: Path, *, accelerator, resume_step: Optional[int], name: str = METRICS_NAME, track: bool = True) -> None:
        self.accelerator = accelerator
        self.track = track
        self.path = Path(logs_dir) / name
        self._file = None
        if accelerator.is_main_process:
            with full_disk_as_error(self.path.parent, self.path.name):
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
            try:
                with full_disk_as_error(self.path.parent, self.path.name):
                    self._file.write(json.dumps(record) + "\n")
                    self._file.flush()
            except CptError:
                self._drop_file()  # its buffer cannot be flushed: no second error at exit
                raise
        numbers = {k: v for k, v in record.items() if k not in ("step",) and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.track and self.accelerator.trackers:
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _drop_file(self) -> None:
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass


class TrainInterval:
    """Train metrics since the last log record: the one place per-step throughput is measured.

    Time is wall-clock time minus the eval and save time spent meanwhile. Every step ends with a
    host sync (the loss and grad norm the step guard needs), so asynchronous device work of the
    interval's steps is counted in full; batch loading is included. Skipped steps count for time and
    tokens (their forward and backward ran) but not for the loss."""

    def __init__(self, timers: dict[str, float]) -> None:
        self.timers = timers
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.loss_steps = 0.0, 0
        self.grad_norm = float("nan")
        self.steps, self.num_tokens = 0, 0
        self.started, self.excluded_at_start = time.perf_counter(), self.timers["eval"] + self.timers["save"]

    def add(self, loss: Optional[float], grad_norm: float, num_tokens: int) -> None:
        """One step: its loss (None when skipped), grad norm and tokens (all processes)."""
        if loss is not None:
            self.loss_sum, self.loss_steps = self.loss_sum + loss, self.loss_steps + 1
        self.grad_norm, self.steps, self.num_tokens = grad_norm, self.steps + 1, self.num_tokens + num_tokens

    def flush(self) -> dict[str, Optional[float]]:
        """Mean loss over the interval's applied steps, last grad norm, tokens/s; then reset."""
        seconds = time.perf_counter() - self.started - (self.timers["eval"] + self.timers["save"] - self.excluded_at_start)
        self.timers["train"] += seconds
        out = {"loss": self.loss_sum / self.loss_steps if self.loss_steps else None,
               "grad_norm": self.grad_norm if math.isfinite(self.grad_norm) else None,
               "tokens_per_s": self.num_tokens / max(seconds, 1e-9), "step_time_s": seconds / max(self.steps, 1)}
        self._reset()
        return out


def exclude_from_rate(bar, seconds: float) -> None:
    """Leave `seconds` spent on something else (eval, a checkpoint) out of a tqdm bar's elapsed time,
    rate and ETA: its clocks move forward by that much, as tqdm's own `unpause` does."""
    if getattr(bar, "disable", True) or seconds <= 0:
        return
    bar.start_t += seconds
    bar.last_print_t += seconds


@contextmanager
def paused(bar):
    """`with paused(bar): evaluate()` - the block's wall time does not count in the bar's rate and ETA."""
    start = time.perf_counter()
    try:
        yield
    finally:
        exclude_from_rate(bar, time.perf_counter() - start)


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
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and math.isfinite(r["eval_loss"])]
    names = sorted({k[len("eval_loss/"):] for r in records for k in r if k.startswith("eval_loss/")})
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss" + (" (mixture)" if len(names) > 1 else ""), linewidth=1.5)
    for name in names if len(names) > 1 else []:
        points = [(r["step"], r[f"eval_loss/{name}"]) for r in records if math.isfinite(r.get(f"eval_loss/{name}", math.nan))]
        if points:
            ax.plot(*zip(*points), marker=".", linestyle="--", label=f"eval loss {name}", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("cpt-train loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    try:
        with full_disk_as_error(png_path.parent, png_path.name):
            fig.savefig(tmp)
    except CptError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    tmp.replace(png_path)
    return png_path


def _mfu_line(summary: dict[str, Any]) -> str:
    formula = summary.get("flop_formula", "")
    if summary.get("mfu") is None:
        return f"MFU n/a ({summary.get('peak_source') or 'no peak'}; {formula})"
    return f"MFU {100 * summary['mfu']:.1f}% ({formula}, peak {summary['peak_tflops']:g} TFLOP/s per device, {summary['peak_source']})"


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The end-of-run summary as a few human lines."""
    def loss(value: Optional[float]) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"

    def ppl(value: Optional[float]) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{math.exp(value):.2f}"

    per_source = summary.get("tokens_per_source", {})
    total = sum(per_source.values()) or 1
    skipped = summary.get("skipped_steps", {})
    lines = [
        f"steps: {summary['global_step']} of {summary['total_steps']} ({summary['steps_this_run']} in this run), epochs: {summary['epoch']:.2f}",
        f"tokens: {summary['num_tokens']:,} trained in this run ({summary['num_tokens_total']:,} in total); by source: "
        + ", ".join(f"{name} {n:,} ({100 * n / total:.1f}%)" for name, n in per_source.items()),
        f"time: {summary['wall_s']:.1f} s (train {summary['train_s']:.1f} s, eval {summary['eval_s']:.1f} s, checkpoints {summary['save_s']:.1f} s)",
        f"throughput: {summary['tokens_per_s']:,.0f} tokens/s ({summary['num_processes']} process(es)); " + _mfu_line(summary),
        f"skipped steps: {sum(skipped.values())} ({skipped.get('non_finite', 0)} non-finite, {skipped.get('spike', 0)} spikes; logs/skipped_steps.jsonl)",
        f"eval loss: {loss(summary['initial_eval_loss'])} -> {loss(summary['final_eval_loss'])} "
        f"(perplexity {ppl(summary['initial_eval_loss'])} -> {ppl(summary['final_eval_loss'])}); "
        f"best {loss(summary['best_eval_loss'])}" + (f" ({summary['best_model_metric']})" if summary.get("best_model_metric") else ""),
    ]
    final = summary.get("final_eval", {})
    if len(final) > 1:
        initial = summary.get("initial_eval", {})
        lines.append("eval loss by source: " + ", ".join(f"{key[len('eval_loss/'):]} {loss(initial.get(key))} -> {loss(value)}" for key, value in final.items()))
    lines.append(f"outputs: {summary['output_dir']} (final_model/, logs/metrics.jsonl, logs/loss_curve.png)")
    return lines
