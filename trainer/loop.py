"""The training loop: `train(config)` = `fit(build_run(config))` (trainer/build.py builds the run).

One optimizer step (`train_step`):
- The loss is normalised by the number of target tokens in the WHOLE accumulated batch, across all
  processes: each micro-batch backpropagates `loss_sum * num_processes / global_target_tokens`
  (the target counts are summed up front, from the labels, before any forward; DDP/FSDP average
  gradients over processes, hence the factor). That is exactly one big batch's mean token loss.
- Then the gradients are clipped and the step's loss and global grad norm are gathered from every
  process in one collective (one host sync per step) so that every process holds the same two
  numbers; `trainer.guard.StepGuard` decides from them, identically everywhere, whether the
  optimizer steps. A skipped step (non-finite, or a spike) leaves weights and AdamW state untouched;
  the schedule and the data position move on. It is logged with its windows and sources (WARNING
  line, logs/skipped_steps.jsonl) and counted; `max_consecutive_skips` in a row stop the run with a
  one-line TrainingError before anything is saved, so the last checkpoint is the last good one.

Per-step throughput is measured in one place, `trainer.logs.TrainInterval` (tokens over wall time
minus eval and save time). Eval, checkpoints and logs are helpers (evaluate.py, checkpoint.py,
logs.py); `fit` is the loop itself.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator

from schemas.config import CptConfig
from schemas.errors import TrainingError
from trainer import checkpoint as ckpt
from trainer.build import RESUME_KEYS, Run, build_run
from trainer.data import IGNORE_INDEX
from trainer.evaluate import MixtureEval, evaluate_sources, to_device
from trainer.flops import FORMULA, mfu
from trainer.logs import LOSS_CURVE_NAME, TrainInterval, paused, plot_loss_curve
from trainer.mixture import StepBatch
from trainer.modeling import causal_lm_loss_sum, save_dtype

logger = logging.getLogger(__name__)

__all__ = ["StepResult", "build_run", "count_targets", "fit", "train", "train_step"]


@dataclass(frozen=True)
class StepResult:
    loss: float  # the step's token-mean loss over all processes
    grad_norm: float  # global L2 norm of the gradients, before clipping
    skipped: Optional[str] = None  # why the optimizer did not step; None when it did


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Target tokens of a micro-batch, as causal_lm_loss_sum counts them (position t scores labels[t+1])."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def global_sum(acc: Accelerator, value: float | int) -> float:
    if acc.num_processes == 1:
        return value
    return acc.reduce(torch.tensor(float(value), dtype=torch.float64, device=acc.device), reduction="sum").item()


def step_statistics(acc: Accelerator, loss_share: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, float]:
    """(loss, grad norm), the same on every process: every process's (loss share, grad norm) gathered
    in one collective, the shares summed in rank order, the grad norm taken from rank 0."""
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    stats = torch.stack([loss_share.detach().double(), torch.as_tensor(grad_norm, device=acc.device).detach().double()])
    rows = acc.gather(stats[None]) if acc.num_processes > 1 else stats[None]
    values = rows.cpu().tolist()
    return math.fsum(row[0] for row in values), values[0][1]


def train_step(run: Run, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
    """One optimizer step over an accumulation window (unless the guard skips it)."""
    acc, model = run.accelerator, run.model
    total_targets = global_sum(acc, sum(count_targets(b) for b in micro_batches))
    scale = acc.num_processes / max(total_targets, 1)
    loss_share = torch.zeros((), dtype=torch.float32, device=acc.device)
    for i, batch in enumerate(micro_batches):
        # Gradients are all-reduced once per step, on the last micro-batch.
        with acc.no_sync(model) if i < len(micro_batches) - 1 else nullcontext():
            loss_sum, _ = causal_lm_loss_sum(model, to_device(batch, acc.device), fused=run.fused_loss)
            acc.backward(loss_sum * scale)
        loss_share += loss_sum.detach() / max(total_targets, 1)
    max_norm = run.config.training.max_grad_norm or float("inf")  # 0 = no clipping, norm still logged
    loss, grad_norm = step_statistics(acc, loss_share, acc.clip_grad_norm_(model.parameters(), max_norm))
    skipped = run.guard.observe(loss, grad_norm)
    if skipped is None:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm, skipped)


def fit(run: Run) -> dict[str, Any]:
    """The training loop. Returns the summary (`trainer.logs.format_summary` prints it)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    acc, state, loader, plan = run.accelerator, run.state, run.loader, run.plan
    start, start_step = time.perf_counter(), state.global_step
    first_windows = run.sources[0].train.num_windows
    bar = tqdm(total=plan.total_steps, initial=state.global_step, desc="cpt-train", unit="step",
               disable=not acc.is_main_process, file=sys.stderr, dynamic_ncols=True)
    with logging_redirect_tqdm():
        try:
            if state.global_step == 0:
                with paused(bar):  # eval time stays out of the bar's rate and ETA
                    _evaluate_and_log(run, {"step": 0, "epoch": 0.0})  # the base model: the number to beat
            interval = TrainInterval(run.timers)
            while state.global_step < plan.total_steps:
                batch = loader.next_step()
                result = train_step(run, batch.micro_batches)
                state.global_step += 1
                state.num_tokens_total += batch.num_tokens
                interval.add(None if result.skipped else result.loss, result.grad_norm, batch.num_tokens)
                if result.skipped:
                    _log_skip(run, batch, result)
                epochs = loader.windows_drawn(0) // first_windows
                epoch_done, state.epoch = epochs > state.epoch, epochs
                _after_step(run, interval, bar, epoch_done=epoch_done)  # log, eval, save
        finally:
            bar.close()  # also on an error, so that its line ends before the `error:` line
        _save(run, run.output_dir / "final_model", resumable=False)
    return _finish(run, wall_s=time.perf_counter() - start, steps_this_run=state.global_step - start_step)


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # NaN/inf are not JSON


def _log_skip(run: Run, batch: StepBatch, result: StepResult) -> None:
    """Say which step was skipped, why, and which windows of which sources it held; stop after too many."""
    step, guard = run.state.global_step, run.guard
    windows = batch.windows_by_source(run.loader.names)
    shown = "; ".join(f"{name} {idx[:8]}{' ...' if len(idx) > 8 else ''}" for name, idx in windows.items())
    logger.warning("step %d skipped, the weights are unchanged (%s); its windows: %s (all in logs/skipped_steps.jsonl)",
                   step, result.skipped, shown)
    run.skips.write({"step": step, "reason": result.skipped, "loss": _json_number(result.loss),
                     "grad_norm": _json_number(result.grad_norm), "windows": windows})
    if guard.must_stop:
        found = ckpt.list_checkpoints(run.output_dir)
        last = f"the last checkpoint, {found[-1][1]}, holds the weights from before them" if found else "no checkpoint was written yet"
        raise TrainingError(
            f"{guard.consecutive} optimizer steps in a row were skipped (steps {step - guard.consecutive + 1}-{step}, the last for {result.skipped}); "
            f"{last}; see logs/skipped_steps.jsonl for their windows, then lower the learning rate, fix the data or raise "
            "training.max_consecutive_skips and resume with --resume_from_checkpoint latest"
        )


def _after_step(run: Run, interval: TrainInterval, bar, *, epoch_done: bool) -> None:
    """Log, evaluate and checkpoint as the config says, in that order (a checkpoint sees it all)."""
    tc, state, step = run.config.training, run.state, run.state.global_step
    last = step >= run.plan.total_steps
    record: dict[str, Any] = {}
    if step % tc.logging_steps == 0 or last or epoch_done:
        record = {"step": step, "epoch": _epoch_progress(run), **interval.flush(), "lr": run.scheduler.get_last_lr()[0],
                  "num_tokens": state.num_tokens_total,
                  **{f"tokens/{name}": run.loader.tokens_drawn(i) for i, name in enumerate(run.loader.names)},
                  "skipped_steps": run.guard.skipped}
        record.update(_utilisation(run, record["tokens_per_s"]))
        if record["loss"] is not None:
            shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
            if "mfu" in record:
                shown["mfu"] = f"{100 * record['mfu']:.1f}%"
            bar.set_postfix(shown, refresh=False)
    if (tc.eval_steps and step % tc.eval_steps == 0) or epoch_done or last:
        with paused(bar):
            _evaluate_and_log(run, record or {"step": step, "epoch": _epoch_progress(run)})
    elif record:
        run.metrics.write(record)
    bar.update(1)
    with paused(bar):  # checkpoints, like evals, stay out of the ETA
        if epoch_done:
            _save(run, run.output_dir / f"checkpoint-epoch-{state.epoch}", resumable=True)
        if tc.save_steps and step % tc.save_steps == 0:
            _save(run, run.output_dir / f"checkpoint-step-{step}", resumable=True)
            if run.accelerator.is_main_process:
                ckpt.rotate_checkpoints(run.output_dir, limit=tc.save_total_limit)
            run.accelerator.wait_for_everyone()


def _utilisation(run: Run, tokens_per_s: float) -> dict[str, float]:
    """MFU of a tokens/s figure (all processes), when the device's peak is known (trainer/flops.py)."""
    value = mfu(tokens_per_s / run.accelerator.num_processes, run.flops.flops_per_token, run.peak_tflops) if run.flops else None
    return {} if value is None else {"mfu": value}


def _epoch_progress(run: Run) -> float:
    return run.loader.passes(0)


def _evaluate_and_log(run: Run, record: dict[str, Any]) -> Optional[MixtureEval]:
    """Evaluate every source with an eval split, write `record` with the figures, keep best_model/."""
    state, result = run.state, None
    evals = [(s.name, s.weight, s.eval) for s in run.sources if s.eval is not None]
    if evals:
        t0 = time.perf_counter()
        result = evaluate_sources(run.accelerator, run.model, evals, batch_size=run.config.training.per_device_eval_batch_size,
                                  max_batches=run.config.training.max_eval_batches)
        run.timers["eval"] += time.perf_counter() - t0
        figures = result.metrics()
        record = {**record, **figures}
        state.last_eval_loss, state.last_eval_step = result.loss, state.global_step
        state.last_eval = {k: v for k, v in figures.items() if k.startswith("eval_loss/")}
        per_source = ", ".join(f"{name} {r.loss:.4f}" for name, r in result.per_source.items())
        logger.info("step %d: eval loss %s (%s; %d tokens)", state.global_step,
                    "n/a" if result.loss is None else f"{result.loss:.4f}", per_source, result.num_tokens)
        if state.global_step == 0:
            state.initial_eval_loss, state.initial_eval = result.loss, dict(state.last_eval)
    run.metrics.write(record)
    value = record.get(run.best_metric) if run.best_metric else None
    if value is not None and math.isfinite(value) and state.global_step > 0 and (state.best_eval_loss is None or value < state.best_eval_loss):
        state.best_eval_loss, state.best_step = value, state.global_step
        _save(run, run.output_dir / "best_model", resumable=False)
    return result


def _lineage(run: Run) -> list[dict[str, Any]]:
    """Every source of the run: its manifest, weight and what has been drawn from it so far."""
    loader = run.loader
    return [{"name": s.name, **s.record, "weight": s.weight, "tokens_drawn": loader.tokens_drawn(i),
             "windows_drawn": loader.windows_drawn(i), "passes": loader.passes(i)} for i, s in enumerate(run.sources)]


def _save(run: Run, folder: Path, *, resumable: bool) -> None:
    t0, acc, state = time.perf_counter(), run.accelerator, run.state
    evaluated_now = state.last_eval_step == state.global_step
    record = {
        "name": folder.name,
        "global_step": state.global_step,
        "epoch": _epoch_progress(run),
        "eval_loss": state.last_eval_loss if evaluated_now else None,
        "eval": state.last_eval if evaluated_now else {},
        "initial_eval_loss": state.initial_eval_loss,
        "best_model_metric": run.best_metric,
        "base_model": run.config.model.model_name_or_path,
        "manifest": run.sources[0].record,  # the first source, as the single-manifest trainer recorded it
        "mixture": _lineage(run),
        "init_from": run.init_from,
        "skipped_steps": {"non_finite": run.guard.skipped_nonfinite, "spike": run.guard.skipped_spike},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    trainer_state = None
    if resumable:
        trainer_state = {**asdict(state), "guard": run.guard.state_dict(), "world_size": acc.num_processes,
                         "total_steps": run.plan.total_steps, "max_length": run.config.model.max_length,
                         **{k: getattr(run.config.training, k) for k in RESUME_KEYS if hasattr(run.config.training, k)}}
    ckpt.save_checkpoint(acc, run.model, run.tokenizer, folder, record=record, trainer_state=trainer_state,
                         loader_state=run.loader.state_dict() if resumable else None, optimizer=run.optimizer, scheduler=run.scheduler,
                         model_dtype=save_dtype(run.config.model.torch_dtype))
    run.timers["save"] += time.perf_counter() - t0
    logger.info("saved %s (step %d)", folder, state.global_step)


def _finish(run: Run, *, wall_s: float, steps_this_run: int) -> dict[str, Any]:
    acc, state = run.accelerator, run.state
    run.metrics.close()
    run.skips.close()
    if acc.is_main_process:
        plot_loss_curve(run.metrics.path, run.output_dir / "logs" / LOSS_CURVE_NAME)
    acc.end_training()
    train_s = run.timers["train"]
    tokens_this_run = state.num_tokens_total - run.tokens_at_start
    tokens_per_s = tokens_this_run / train_s if train_s > 0 else 0.0
    return {
        "global_step": state.global_step,
        "total_steps": run.plan.total_steps,
        "steps_this_run": steps_this_run,
        "epoch": _epoch_progress(run),
        "num_tokens": tokens_this_run,
        "num_tokens_total": state.num_tokens_total,
        "tokens_per_source": {name: run.loader.tokens_drawn(i) for i, name in enumerate(run.loader.names)},
        "wall_s": wall_s,
        "train_s": train_s,
        "eval_s": run.timers["eval"],
        "save_s": run.timers["save"],
        "tokens_per_s": tokens_per_s,
        "num_processes": acc.num_processes,
        "mfu": _utilisation(run, tokens_per_s).get("mfu"),
        "flops_per_token": run.flops.flops_per_token if run.flops else None,
        "flop_formula": run.flops.describe() if run.flops else FORMULA,
        "peak_tflops": run.peak_tflops,
        "peak_source": run.peak_source,
        "skipped_steps": {"non_finite": run.guard.skipped_nonfinite, "spike": run.guard.skipped_spike},
        "initial_eval_loss": state.initial_eval_loss,
        "final_eval_loss": state.last_eval_loss,
        "initial_eval": state.initial_eval,
        "final_eval": state.last_eval,
        "best_eval_loss": state.best_eval_loss,
        "best_model_metric": run.best_metric,
        "output_dir": str(run.output_dir),
    }


def train(config: CptConfig, manifests=None) -> dict[str, Any]:
    """`cpt-train`: verify, build, fit. Returns the summary dict."""
    return fit(build_run(config, manifests))
