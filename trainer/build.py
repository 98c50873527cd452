"""Build everything a run needs from the config (OLMo-core style), then `trainer.loop.fit` runs it.

Order of work, so that bad input fails fast and cheaply:
1. resolve `--resume_from_checkpoint` and check output_dir (no weights touched); check that a hub
   model can be reached (or is cached) and that max_length fits the model's max_position_embeddings;
2. verify every manifest and its shards (size + sha256), their shared tokenizer and separator, the
   model's tokenizer against the data and its embedding rows (from config.json), the `data` keys
   against the manifests; on resume, the checkpoint's mixture against this one;
3. create the Accelerator, plan the steps and refuse a plan that would repeat a source more than
   `max_repetitions` times;
4. only then load the model, build AdamW + schedule, restore a checkpoint.

A new CPT stage starts from a model folder this trainer wrote (`model_name_or_path
runs/stage1/final_model`): its weights, with a fresh optimizer, schedule, data position and
spike-guard history, and its record kept as `init_from` in every record of the new run. That is not
resuming: `--resume_from_checkpoint` continues the same run (same data, same schedule) exactly.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from schemas.config import DEFAULT_CONFIG_NAME, CptConfig, write_config
from schemas.errors import ConfigError
from schemas.storage import full_disk_as_error
from trainer import checkpoint as ckpt
from trainer.flops import FlopCount, count_flops, device_peak_tflops
from trainer.guard import StepGuard
from trainer.logs import SKIPPED_NAME, MetricsLog, init_trackers
from trainer.mixture import MixtureLoader
from trainer.modeling import check_hub_access, check_max_length, embedding_rows, load_model, load_tokenizer
from trainer.optim import StepPlan, build_optimizer, build_scheduler, no_decay_names, plan_steps
from trainer.sources import Source, load_sources
from trainer.verify import check_tokenizer_matches

logger = logging.getLogger(__name__)

# Settings a checkpoint's data position depends on: resuming with other values cannot be exact.
RESUME_KEYS = ("gradient_accumulation_steps", "per_device_train_batch_size", "max_length", "seed")


@dataclass
class TrainState:
    """What a resumable checkpoint stores besides model/optimizer/scheduler/RNG/loader/guard state."""

    global_step: int = 0
    epoch: int = 0  # passes completed over the first source
    num_tokens_total: int = 0  # input tokens trained on, all processes, all runs
    initial_eval_loss: Optional[float] = None  # the base model's combined eval loss (step 0)
    initial_eval: dict[str, float] = field(default_factory=dict)  # the base model's eval_loss/<name>
    best_eval_loss: Optional[float] = None  # lowest value of the best-model metric after step 0
    best_step: Optional[int] = None
    last_eval_loss: Optional[float] = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: Optional[int] = None


@dataclass
class Run:
    """Everything `fit` needs, built by `build_run`."""

    config: CptConfig
    sources: list[Source]
    accelerator: Accelerator
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    loader: MixtureLoader
    guard: StepGuard
    plan: StepPlan
    output_dir: Path
    metrics: MetricsLog
    skips: MetricsLog  # logs/skipped_steps.jsonl
    best_metric: Optional[str]  # the metrics.jsonl key best_model/ follows, None without eval data
    init_from: Optional[dict[str, Any]] = None  # lineage of the model folder a new stage started from
    state: TrainState = field(default_factory=TrainState)
    tokens_at_start: int = 0  # state.num_tokens_total when this process started (resume)
    timers: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0, "save": 0.0})
    flops: Optional[FlopCount] = None  # FLOPs per trained token (trainer/flops.py)
    peak_tflops: Optional[float] = None  # per device; None: MFU not reported
    peak_source: str = ""  # the device name, training.peak_tflops, or why there is no peak
    fused_loss: bool = False  # output projection + loss fused (training.fused_linear_cross_entropy, not under FSDP)


def _mixed_precision(bf16: bool) -> str:
    if bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"  # modeling.load_model logs once that training runs in fp32


def _best_metric(config: CptConfig, sources: list[Source]) -> Optional[str]:
    """The key best_model/ follows: the configured one (checked), else the first source's eval loss,
    else the combined eval loss; None when no source has an eval split."""
    with_eval = [s.name for s in sources if s.eval is not None]
    wanted = config.training.best_model_metric
    if wanted is not None:
        name = wanted.partition("/")[2]
        if name and name not in with_eval:
            known = ", ".join(f"eval_loss/{n}" for n in with_eval) or "none: no source has an eval split"
            raise ConfigError(f"training.best_model_metric={wanted!r} names no source with an eval split; use eval_loss or one of {known}")
        if not name and not any(s.eval is not None and s.weight > 0 for s in sources):
            raise ConfigError("training.best_model_metric=eval_loss needs a trained source (weight > 0) with an eval split; name a source: eval_loss/<name>")
        return wanted
    if not with_eval:
        return None
    if sources[0].eval is None:
        logger.warning("the first source %s has no eval split: best_model/ follows the combined eval_loss", sources[0].name)
        return "eval_loss" if any(s.eval is not None and s.weight > 0 for s in sources) else f"eval_loss/{with_eval[0]}"
    return f"eval_loss/{sources[0].name}"


def _check_resume_mixture(folder: Path, sources: list[Source]) -> None:
    """Refuse, before any weights load, a checkpoint trained on other manifests or weights."""
    record = ckpt.read_record(folder) or {}
    ours = [(s.name, s.record["sha256"], s.weight) for s in sources]
    theirs = [(m.get("name"), m.get("sha256"), m.get("weight")) for m in record.get("mixture") or []]
    if not theirs and isinstance(record.get("manifest"), dict):  # a record of the single-manifest trainer
        theirs = [(sources[0].name, record["manifest"].get("sha256"), 1.0)]
    if theirs != ours:
        def describe(items):
            return ", ".join(f"{name} (sha256 {str(sha)[:12]}..., weight {weight})" for name, sha, weight in items)
        raise ConfigError(
            f"checkpoint {folder} was trained on {describe(theirs) or 'an unrecorded mixture'}, this run on {describe(ours)}; "
            "resume with the same --manifest list, mixture_weights and mixture_names, or start a new output_dir"
        )


def _new_stage(config: CptConfig) -> Optional[dict[str, Any]]:
    lineage = ckpt.stage_lineage(config.model.model_name_or_path)
    if lineage is not None:
        trained_on = ", ".join(str(m.get("name")) for m in lineage.get("mixture") or []) or (lineage.get("manifest") or {}).get("path", "?")
        logger.info("new stage: weights of %s (step %s of a run on %s); fresh optimizer, schedule, data order and spike-guard history",
                    lineage["path"], lineage.get("global_step"), trained_on)
    return lineage


def build_run(config: CptConfig, manifests: str | Path | Sequence[str | Path] | None = None) -> Run:
    """Verify, then build model, optimizer, schedule, data and logs; restore a checkpoint if asked.

    `manifests` (one path or several) replaces `config.training.manifests` when given."""
    if manifests is not None:
        paths = [manifests] if isinstance(manifests, (str, Path)) else list(manifests)
        config = config.with_overrides({"training.manifests": [str(p) for p in paths]}, source="build_run")
    tc = config.training
    out = Path(tc.output_dir)
    resume_from = ckpt.resolve_checkpoint(tc.resume_from_checkpoint, out) if tc.resume_from_checkpoint else None
    ckpt.check_output_dir(out, resuming=resume_from is not None, overwrite=tc.overwrite_output_dir)
    check_hub_access(config.model)
    check_max_length(config.model)

    sources = load_sources(config)
    tokenizer = load_tokenizer(config.model)
    check_tokenizer_matches(sources[0].manifest, tokenizer, embedding_rows=embedding_rows(config.model))
    if resume_from is not None:
        _check_resume_mixture(resume_from, sources)
    best_metric = _best_metric(config, sources)
    init_from = _new_stage(config)

    log_with = [t.strip() for t in tc.report_to.split(",") if t.strip() and t.strip() != "none"] or None
    acc = Accelerator(mixed_precision=_mixed_precision(tc.bf16), log_with=log_with, project_dir=str(out / "logs"))
    if resume_from is not None:
        ckpt.check_resume_supported(acc, resume_from)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched != acc.num_processes:
        # e.g. torchrun on a machine without GPUs: every process would train alone, into one output_dir.
        raise ConfigError(
            f"{launched} processes were launched but Accelerate set up {acc.num_processes}; on CPU set ACCELERATE_USE_CPU=true "
            "(or use `accelerate launch --cpu`), on GPUs check the launcher"
        )
    windows_per_step = tc.per_device_train_batch_size * tc.gradient_accumulation_steps * acc.num_processes
    plan = plan_steps(tc, windows_per_step=windows_per_step, max_length=config.model.max_length,
                      first_source_windows=sources[0].train.num_windows, first_source_weight=sources[0].weight)
    # num_train_epochs is itself a request to repeat the first source that many times.
    limits = [math.inf if i == 0 and plan.decided_by == "num_train_epochs" else tc.max_repetitions for i in range(len(sources))]
    loader = MixtureLoader([s.for_loader() for s in sources], batch_size=tc.per_device_train_batch_size,
                           accumulation=tc.gradient_accumulation_steps, seed=tc.seed, rank=acc.process_index,
                           world_size=acc.num_processes, max_repetitions=limits)
    loader.check_budget(plan.total_steps, fix="raise training.max_repetitions, lower the source's weight, add data or shorten the run")

    set_seed(tc.seed)
    fsdp = getattr(acc.state, "fsdp_plugin", None)
    checkpointing = tc.gradient_checkpointing
    if checkpointing and fsdp is not None and getattr(fsdp, "activation_checkpointing", False):
        logger.info("gradient checkpointing is done by FSDP (fsdp_activation_checkpointing); not enabled on the model too")
        checkpointing = False
    model = load_model(config.model, device_type=acc.device.type, bf16=tc.bf16, gradient_checkpointing=checkpointing,
                       checkpoint_every=tc.checkpoint_every, compile_layers=tc.torch_compile)
    model.train()
    flops = count_flops(model, seq_len=config.model.max_length)
    peak, peak_source = device_peak_tflops(acc.device, tc.peak_tflops)
    logger.info("MFU: %s against %s", flops.describe(), f"{peak:g} TFLOP/s per device ({peak_source})" if peak else f"no peak: {peak_source}")
    fused_loss = tc.fused_linear_cross_entropy and acc.distributed_type != DistributedType.FSDP
    if tc.fused_linear_cross_entropy and not fused_loss:
        logger.info("training.fused_linear_cross_entropy: off under FSDP (the output weight is sharded outside the forward); chunked loss instead")
    no_decay = no_decay_names(model)
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        # FSDP1 flattens parameters: wrap first, then build the optimizer on the wrapped ones.
        model = acc.prepare(model)
        optimizer = acc.prepare(build_optimizer(model, tc, no_decay=no_decay, device_type=acc.device.type))
    else:
        # Together, so that FSDP2 remaps the optimizer's parameters after sharding.
        model, optimizer = acc.prepare(model, build_optimizer(model, tc, no_decay=no_decay, device_type=acc.device.type))
    keep_low_precision_outputs(acc, model)
    # The scheduler is NOT prepared: Accelerate's wrapper steps it num_processes times per step.
    scheduler = build_scheduler(optimizer.optimizer, tc, plan)
    guard = StepGuard(enabled=tc.spike_guard, window=tc.spike_window, sigma=tc.spike_sigma, warmup=tc.spike_warmup_steps,
                      max_consecutive=tc.max_consecutive_skips)

    state = TrainState()
    if resume_from is not None:
        state = _restore(acc, resume_from, loader, guard, config, plan, model=model, optimizer=optimizer, scheduler=scheduler)
    elif acc.is_main_process and tc.overwrite_output_dir:
        ckpt.clear_previous_run(out)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_tmp(out)
        with full_disk_as_error(out, DEFAULT_CONFIG_NAME):
            write_config(config, out / DEFAULT_CONFIG_NAME)
    acc.wait_for_everyone()
    resume_step = state.global_step if resume_from is not None else None
    init_trackers(acc, config.to_dict(), resume_step=resume_step)
    metrics = MetricsLog(out / "logs", accelerator=acc, resume_step=resume_step)
    skips = MetricsLog(out / "logs", accelerator=acc, resume_step=resume_step, name=SKIPPED_NAME, track=False)
    logger.info(
        "plan: %d optimizer steps (set by %s; %.2f passes over %s), %d warmup, %s schedule; %d window(s) of %d tokens x %d "
        "micro-batches x %d process(es) = %d tokens per step",
        plan.total_steps, plan.decided_by, plan.num_epochs, sources[0].name, plan.warmup_steps, tc.lr_scheduler_type,
        tc.per_device_train_batch_size, config.model.max_length, tc.gradient_accumulation_steps, acc.num_processes, plan.tokens_per_step,
    )
    return Run(config, sources, acc, model, tokenizer, optimizer, scheduler, loader, guard, plan, out, metrics, skips,
               best_metric, init_from=init_from, state=state, tokens_at_start=state.num_tokens_total,
               flops=flops, peak_tflops=peak, peak_source=peak_source, fused_loss=fused_loss)


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


def _restore(acc: Accelerator, folder: Path, loader: MixtureLoader, guard: StepGuard, config: CptConfig, plan: StepPlan, *,
             model, optimizer, scheduler) -> TrainState:
    saved, loader_state = ckpt.load_checkpoint(acc, folder, model=model, optimizer=optimizer, scheduler=scheduler)
    current = {**{k: getattr(config.training, k) for k in RESUME_KEYS if hasattr(config.training, k)}, "max_length": config.model.max_length}
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"checkpoint {folder} was trained with {key}={saved[key]}, this run has {value}; set --{key} {saved[key]} to resume exactly")
    loader.load_state_dict(loader_state)
    guard.load_state_dict(saved.get("guard") or {})
    if saved.get("total_steps") != plan.total_steps:
        logger.warning("the run now has %d steps (checkpoint: %s); the learning-rate schedule follows the new total", plan.total_steps, saved.get("total_steps"))
    state = TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__ if k in saved})
    logger.info("resumed from %s at step %d (%s), no window replayed", folder, state.global_step,
                ", ".join(f"{name} {loader.passes(i):.2f} passes" for i, name in enumerate(loader.names)))
    return state
