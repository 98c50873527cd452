"""Build everything from the config, then fit (OLMo-core style): `train(config, manifest_path)`.

Order of work, so that bad input fails fast and cheaply:
1. resolve `--resume_from_checkpoint` and check output_dir (no weights touched);
2. verify the manifest and shards (size + sha256), the tokenizer against the data and the model's
   embedding rows (from config.json), and the `data` keys against the manifest;
3. only then create the Accelerator, load the model, build AdamW + schedule, restore a checkpoint.

The loss of one optimizer step is normalised by the number of target tokens in the WHOLE
accumulated batch, across all processes: each micro-batch backpropagates
`loss_sum * num_processes / global_target_tokens` (the target counts are summed up front, from the
labels, before any forward; DDP/FSDP average gradients over processes, hence the factor). That is
exactly one big batch's mean token loss, whatever the micro-batches' token counts.

Eval, checkpoints and logs are helpers (trainer/evaluate.py, checkpoint.py, logs.py); `fit` is the
loop itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from schemas.config import DEFAULT_CONFIG_NAME, CptConfig, write_config
from schemas.errors import ConfigError
from trainer import checkpoint as ckpt
from trainer.data import IGNORE_INDEX, PackedWindows, WindowLoader
from trainer.evaluate import EvalResult, evaluate, to_device
from trainer.logs import LOSS_CURVE_NAME, MetricsLog, TrainInterval, init_trackers, plot_loss_curve
from trainer.modeling import causal_lm_loss_sum, embedding_rows, load_model, load_tokenizer, save_dtype
from trainer.optim import StepPlan, build_optimizer, build_scheduler, no_decay_names, plan_steps
from trainer.verify import check_tokenizer_matches, load_verified_manifest, resolve_data_config

logger = logging.getLogger(__name__)

# Settings a checkpoint's data position depends on: resuming with other values cannot be exact.
RESUME_KEYS = ("gradient_accumulation_steps", "per_device_train_batch_size", "max_length", "seed")


@dataclass
class TrainState:
    """What a resumable checkpoint stores besides model/optimizer/scheduler/RNG/loader state."""

    global_step: int = 0
    epoch: int = 0  # epochs completed
    num_tokens_total: int = 0  # input tokens trained on, all processes, all runs
    initial_eval_loss: Optional[float] = None  # the base model's (step 0)
    best_eval_loss: Optional[float] = None  # lowest eval loss after step 0 (best_model/)
    best_step: Optional[int] = None
    last_eval_loss: Optional[float] = None
    last_eval_step: Optional[int] = None


@dataclass
class Run:
    """Everything `fit` needs, built by `build_run`."""

    config: CptConfig
    manifest_path: Path
    manifest_record: dict[str, str]
    accelerator: Accelerator
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    loader: WindowLoader
    eval_windows: Optional[PackedWindows]
    plan: StepPlan
    output_dir: Path
    metrics: MetricsLog
    state: TrainState = field(default_factory=TrainState)
    tokens_at_start: int = 0  # state.num_tokens_total when this process started (resume)
    timers: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0, "save": 0.0})


def _log_data_report(lines: list[str]) -> None:
    """One line for the keys taken from the manifest, one line each for anything else (ignored keys)."""
    suffix = " (from manifest)"
    taken = [line[: -len(suffix)] for line in lines if line.endswith(suffix)]
    if taken:
        logger.info("data config from the manifest: %s", ", ".join(taken))
    for line in lines:
        if not line.endswith(suffix):
            logger.warning("%s", line)


def _mixed_precision(bf16: bool) -> str:
    if bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"  # modeling.load_model logs once that training runs in fp32


def build_run(config: CptConfig, manifest_path: str | Path) -> Run:
    """Verify, then build model, optimizer, schedule, data and logs; restore a checkpoint if asked."""
    tc = config.training
    out = Path(tc.output_dir)
    resume_from = ckpt.resolve_checkpoint(tc.resume_from_checkpoint, out) if tc.resume_from_checkpoint else None
    ckpt.check_output_dir(out, resuming=resume_from is not None, overwrite=tc.overwrite_output_dir)

    manifest, folder = load_verified_manifest(manifest_path, checksums=tc.verify_checksums)
    tokenizer = load_tokenizer(config.model)
    check_tokenizer_matches(manifest, tokenizer, embedding_rows=embedding_rows(config.model))
    _log_data_report(resolve_data_config(config, manifest))
    record = ckpt.manifest_record(manifest_path)
    if resume_from is not None:
        trained_on = (ckpt.read_record(resume_from) or {}).get("manifest", {})
        if trained_on.get("sha256") != record["sha256"]:
            raise ConfigError(
                f"checkpoint {resume_from} was trained on manifest {trained_on.get('path')} (sha256 {str(trained_on.get('sha256'))[:12]}...), "
                f"this run's {record['path']} has sha256 {record['sha256'][:12]}...; resume with the same manifest or start a new output_dir"
            )
    train_windows = PackedWindows(manifest, folder, "train", max_length=config.model.max_length)
    eval_windows = None
    if manifest.splits.get("eval") is not None and manifest.splits["eval"].num_tokens > 0:
        eval_windows = PackedWindows(manifest, folder, "eval", max_length=config.model.max_length)
    else:
        logger.warning("the manifest has no eval split: no eval loss, no best_model/ (build with --eval FILE or --eval_fraction F)")

    log_with = [t.strip() for t in tc.report_to.split(",") if t.strip() and t.strip() != "none"] or None
    acc = Accelerator(mixed_precision=_mixed_precision(tc.bf16), log_with=log_with, project_dir=str(out / "logs"))
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched != acc.num_processes:
        # e.g. torchrun on a machine without GPUs: every process would train alone, into one output_dir.
        raise ConfigError(
            f"{launched} processes were launched but Accelerate set up {acc.num_processes}; on CPU set ACCELERATE_USE_CPU=true "
            "(or use `accelerate launch --cpu`), on GPUs check the launcher"
        )
    set_seed(tc.seed)
    fsdp = getattr(acc.state, "fsdp_plugin", None)
    checkpointing = tc.gradient_checkpointing
    if checkpointing and fsdp is not None and getattr(fsdp, "activation_checkpointing", False):
        logger.info("gradient checkpointing is done by FSDP (fsdp_activation_checkpointing); not enabled on the model too")
        checkpointing = False
    model = load_model(config.model, device_type=acc.device.type, bf16=tc.bf16, gradient_checkpointing=checkpointing)
    model.train()
    loader = WindowLoader(train_windows, batch_size=tc.per_device_train_batch_size, seed=tc.seed, shuffle=True,
                          rank=acc.process_index, world_size=acc.num_processes)
    plan = plan_steps(tc, batches_per_epoch=len(loader))
    no_decay = no_decay_names(model)
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        # FSDP1 flattens parameters: wrap first, then build the optimizer on the wrapped ones.
        model = acc.prepare(model)
        optimizer = acc.prepare(build_optimizer(model, tc, no_decay=no_decay))
    else:
        # Together, so that FSDP2 remaps the optimizer's parameters after sharding.
        model, optimizer = acc.prepare(model, build_optimizer(model, tc, no_decay=no_decay))
    keep_low_precision_outputs(acc, model)
    # The scheduler is NOT prepared: Accelerate's wrapper steps it num_processes times per step.
    scheduler = build_scheduler(optimizer.optimizer, tc, plan)
    acc.register_for_checkpointing(scheduler)

    state = TrainState()
    if resume_from is not None:
        state = _restore(acc, resume_from, loader, config, plan)
    elif acc.is_main_process and tc.overwrite_output_dir:
        ckpt.clear_previous_run(out)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_tmp(out)
        write_config(config, out / DEFAULT_CONFIG_NAME)
    acc.wait_for_everyone()
    resume_step = state.global_step if resume_from is not None else None
    init_trackers(acc, config.to_dict(), resume_step=resume_step)
    metrics = MetricsLog(out / "logs", accelerator=acc, resume_step=resume_step)
    logger.info(
        "plan: %d optimizer steps (%d per epoch, %d epoch(s)), %d warmup; %d window(s) of %d tokens x %d micro-batches x %d process(es) = %d tokens per step",
        plan.total_steps, plan.steps_per_epoch, plan.num_epochs, plan.warmup_steps, tc.per_device_train_batch_size,
        config.model.max_length, tc.gradient_accumulation_steps, acc.num_processes,
        tc.per_device_train_batch_size * config.model.max_length * tc.gradient_accumulation_steps * acc.num_processes,
    )
    return Run(config, Path(manifest_path), record, acc, model, tokenizer, optimizer, scheduler, loader,
               eval_windows, plan, out, metrics, state=state, tokens_at_start=state.num_tokens_total)


def keep_low_precision_outputs(acc: Accelerator, model) -> bool:
    """Undo Accelerate's cast of the model's outputs to fp32 under bf16 autocast (autocast stays).

    That cast makes a float32 copy of the [B, L, vocab] logits and of their gradient (Qwen2.5-7B,
    B=4, L=2048: 5 GB each); causal_lm_loss_sum upcasts the logits chunk by chunk instead.
    Returns True when a cast was removed."""
    from types import MethodType

    from accelerate.utils.operations import ConvertOutputsToFp32

    inner = acc.unwrap_model(model, keep_fp32_wrapper=True)
    forward = inner.forward
    cast = getattr(getattr(forward, "__func__", forward), "__wrapped__", None)
    if not isinstance(cast, ConvertOutputsToFp32):
        return False
    autocast_forward = cast.model_forward
    inner.forward = MethodType(autocast_forward, inner) if hasattr(forward, "__func__") else autocast_forward
    return True


def _restore(acc: Accelerator, folder: Path, loader: WindowLoader, config: CptConfig, plan: StepPlan) -> TrainState:
    saved, loader_state = ckpt.load_checkpoint(acc, folder)
    current = {**{k: getattr(config.training, k) for k in RESUME_KEYS if hasattr(config.training, k)}, "max_length": config.model.max_length}
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"checkpoint {folder} was trained with {key}={saved[key]}, this run has {value}; set --{key} {saved[key]} to resume exactly")
    loader.load_state_dict(loader_state)
    if saved.get("total_steps") != plan.total_steps:
        logger.warning("the run now has %d steps (checkpoint: %s); the learning-rate schedule follows the new total", plan.total_steps, saved.get("total_steps"))
    state = TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__ if k in saved})
    logger.info("resumed from %s at step %d (epoch %d, batch %d of %d), no batch replayed",
                folder, state.global_step, state.epoch, loader.batches_done, len(loader))
    return state


def accumulation_windows(loader: WindowLoader, size: int) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Groups of `size` micro-batches (the last of an epoch may be shorter), from the loader's position."""
    window: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Target tokens of a micro-batch, as causal_lm_loss_sum counts them (position t scores labels[t+1])."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def global_sum(acc: Accelerator, value: float | int) -> float:
    if acc.num_processes == 1:
        return value
    return acc.reduce(torch.tensor(float(value), dtype=torch.float64, device=acc.device), reduction="sum").item()


def train_step(run: Run, window: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over an accumulation window; returns (this process's share of the step's
    token-mean loss, grad norm) as device tensors (summing the shares over processes gives the loss)."""
    acc, model = run.accelerator, run.model
    total_targets = global_sum(acc, sum(count_targets(b) for b in window))
    scale = acc.num_processes / max(total_targets, 1)
    loss_share = torch.zeros((), dtype=torch.float32, device=acc.device)
    for i, batch in enumerate(window):
        # Gradients are all-reduced once per step, on the last micro-batch.
        with acc.no_sync(model) if i < len(window) - 1 else nullcontext():
            loss_sum, _ = causal_lm_loss_sum(model, to_device(batch, acc.device))
            acc.backward(loss_sum * scale)
        loss_share += loss_sum.detach() / max(total_targets, 1)
    max_norm = run.config.training.max_grad_norm or float("inf")  # 0 = no clipping, norm still logged
    grad_norm = acc.clip_grad_norm_(model.parameters(), max_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_share, grad_norm


def fit(run: Run) -> dict[str, Any]:
    """The training loop. Returns the summary (`trainer.logs.format_summary` prints it)."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    acc, tc, state, loader, plan = run.accelerator, run.config.training, run.state, run.loader, run.plan
    start, start_step = time.perf_counter(), state.global_step
    bar = tqdm(total=plan.total_steps, initial=state.global_step, desc="cpt-train", unit="step",
               disable=not acc.is_main_process, file=sys.stderr, dynamic_ncols=True)
    with logging_redirect_tqdm():
        if state.global_step == 0:
            _evaluate_and_log(run, {"step": 0, "epoch": 0.0})  # the base model: the number to beat
        interval = TrainInterval(run.timers)
        while state.global_step < plan.total_steps:
            loader.set_epoch(state.epoch)
            for window in accumulation_windows(loader, tc.gradient_accumulation_steps):
                loss_share, grad_norm = train_step(run, window)
                num_tokens = sum(b["input_ids"].numel() for b in window) * acc.num_processes
                interval.add(loss_share, grad_norm, num_tokens)
                state.global_step += 1
                state.num_tokens_total += num_tokens
                epoch_done = loader.batches_done >= len(loader)
                if epoch_done:
                    state.epoch += 1
                    loader.set_epoch(state.epoch)
                _after_step(run, interval, bar, epoch_done=epoch_done)  # log, eval, save
                if epoch_done or state.global_step >= plan.total_steps:
                    break
        bar.close()
        _save(run, run.output_dir / "final_model", resumable=False)
    return _finish(run, wall_s=time.perf_counter() - start, steps_this_run=state.global_step - start_step)


def _after_step(run: Run, interval: TrainInterval, bar, *, epoch_done: bool) -> None:
    """Log, evaluate and checkpoint as the config says, in that order (a checkpoint sees it all)."""
    tc, state, step = run.config.training, run.state, run.state.global_step
    last = step >= run.plan.total_steps
    record: dict[str, Any] = {}
    if step % tc.logging_steps == 0 or last or epoch_done:
        record = {"step": step, "epoch": _epoch_progress(run), **interval.flush(run.accelerator),
                  "lr": run.scheduler.get_last_lr()[0], "num_tokens": state.num_tokens_total}
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
    if (tc.eval_steps and step % tc.eval_steps == 0) or epoch_done or last:
        _evaluate_and_log(run, record or {"step": step, "epoch": _epoch_progress(run)})
    elif record:
        run.metrics.write(record)
    bar.update(1)
    if epoch_done:
        _save(run, run.output_dir / f"checkpoint-epoch-{state.epoch}", resumable=True)
    if tc.save_steps and step % tc.save_steps == 0:
        _save(run, run.output_dir / f"checkpoint-step-{step}", resumable=True)
        if run.accelerator.is_main_process:
            ckpt.rotate_checkpoints(run.output_dir, limit=tc.save_total_limit)
        run.accelerator.wait_for_everyone()


def _epoch_progress(run: Run) -> float:
    return run.state.epoch + run.loader.batches_done / max(len(run.loader), 1)


def _evaluate_and_log(run: Run, record: dict[str, Any]) -> Optional[EvalResult]:
    """Evaluate (when there is an eval split), write `record` with the eval figures, keep best_model/."""
    state, result = run.state, None
    if run.eval_windows is not None:
        t0 = time.perf_counter()
        result = evaluate(run.accelerator, run.model, run.eval_windows, batch_size=run.config.training.per_device_eval_batch_size,
                          max_batches=run.config.training.max_eval_batches)
        run.timers["eval"] += time.perf_counter() - t0
        record = {**record, "eval_loss": result.loss, "eval_ppl": result.perplexity, "eval_tokens": result.num_tokens}
        state.last_eval_loss, state.last_eval_step = result.loss, state.global_step
        logger.info("step %d: eval loss %.4f, perplexity %.2f (%d tokens)", state.global_step, result.loss, result.perplexity, result.num_tokens)
        if state.global_step == 0:
            state.initial_eval_loss = result.loss
    run.metrics.write(record)
    if result is not None and state.global_step > 0 and (state.best_eval_loss is None or result.loss < state.best_eval_loss):
        state.best_eval_loss, state.best_step = result.loss, state.global_step
        _save(run, run.output_dir / "best_model", resumable=False)
    return result


def _save(run: Run, folder: Path, *, resumable: bool) -> None:
    t0, acc, state = time.perf_counter(), run.accelerator, run.state
    record = {
        "name": folder.name,
        "global_step": state.global_step,
        "epoch": _epoch_progress(run),
        "eval_loss": state.last_eval_loss if state.last_eval_step == state.global_step else None,
        "initial_eval_loss": state.initial_eval_loss,
        "base_model": run.config.model.model_name_or_path,
        "manifest": run.manifest_record,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    trainer_state = None
    if resumable:
        trainer_state = {**asdict(state), "world_size": acc.num_processes, "total_steps": run.plan.total_steps,
                         "max_length": run.config.model.max_length,
                         **{k: getattr(run.config.training, k) for k in RESUME_KEYS if hasattr(run.config.training, k)}}
    ckpt.save_checkpoint(acc, run.model, run.tokenizer, folder, record=record, trainer_state=trainer_state,
                         loader_state=run.loader.state_dict() if resumable else None,
                         model_dtype=save_dtype(run.config.model.torch_dtype, mixed_precision=acc.mixed_precision))
    run.timers["save"] += time.perf_counter() - t0
    logger.info("saved %s (step %d)", folder, state.global_step)


def _finish(run: Run, *, wall_s: float, steps_this_run: int) -> dict[str, Any]:
    acc, state = run.accelerator, run.state
    run.metrics.close()
    if acc.is_main_process:
        plot_loss_curve(run.metrics.path, run.output_dir / "logs" / LOSS_CURVE_NAME)
    acc.end_training()
    train_s = run.timers["train"]
    tokens_this_run = state.num_tokens_total - run.tokens_at_start
    summary = {
        "global_step": state.global_step,
        "total_steps": run.plan.total_steps,
        "steps_this_run": steps_this_run,
        "epoch": _epoch_progress(run),
        "num_tokens": tokens_this_run,
        "num_tokens_total": state.num_tokens_total,
        "wall_s": wall_s,
        "train_s": train_s,
        "eval_s": run.timers["eval"],
        "save_s": run.timers["save"],
        "tokens_per_s": tokens_this_run / train_s if train_s > 0 else 0.0,
        "num_processes": acc.num_processes,
        "initial_eval_loss": state.initial_eval_loss,
        "final_eval_loss": state.last_eval_loss,
        "best_eval_loss": state.best_eval_loss,
        "output_dir": str(run.output_dir),
    }
    return summary


def train(config: CptConfig, manifest_path: str | Path) -> dict[str, Any]:
    """`cpt-train`: verify, build, fit. Returns the summary dict."""
    return fit(build_run(config, manifest_path))
