"""cpt-train's training throughput over a bare PyTorch loop's, side by side in one run.

Both loops get the same model (the tiny Qwen2 from data/tiny-qwen2.json, same weights), the same
batches (the trainer's MixtureLoader order over the same memory-mapped shards; data loading is timed in both),
the same optimizer (AdamW, same parameter groups and hyperparameters), the same schedule, the same
accumulation (loss summed per micro-batch, divided by the step's target-token count), the same
clipping and the same loss function (trainer.modeling.causal_lm_loss_sum), with bf16 autocast on a
GPU that supports it. The trainer side is the real `cpt-train` (`trainer.loop.build_run` + `fit`,
logging every step, eval and saves excluded from its timer); its tokens/s is read back from its own
logs/metrics.jsonl. Steps before `--warmup` are left out of both. Runs alternate in ABBA order
`--repeats` times (the CPU may be shared); the best and median of each are printed,
target: trainer / bare >= 0.95. A synchronised pass of the bare loop then splits a step into data,
forward+backward and optimizer time.

    .venv/bin/python bench/bench_train.py [--device cpu|cuda] [--steps 12] [--max_length 128] ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_dataset(folder: Path, *, tokenizer_dir: Path, num_tokens: int, seed: int) -> Path:
    """Random-id documents (log-normal lengths, ~300 tokens) as real shards + manifest."""
    from transformers import AutoTokenizer

    from pipeline.shards import write_token_dataset
    from pipeline.tokenize.load import tokenizer_info

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng = np.random.default_rng(seed)

    def documents(budget: int):
        written = 0
        while written < budget:
            n = int(min(max(rng.lognormal(mean=5.5, sigma=0.8), 4), 8000))
            yield rng.integers(0, 151_000, size=n, dtype=np.uint32)  # below every control-token id
            written += n + 1

    return write_token_dataset(folder, {"train": documents(num_tokens), "eval": documents(2048)},
                               tokenizer=tokenizer_info(tok, name_or_path=str(tokenizer_dir)),
                               target_bytes=32 * 2**20, note="synthetic benchmark data")


def make_config(args, model_dir: Path, output_dir: Path):
    from schemas.config import CptConfig

    return CptConfig().with_overrides({
        "model_name_or_path": str(model_dir), "output_dir": str(output_dir), "max_length": args.max_length,
        "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": args.grad_accum,
        "max_steps": args.steps, "logging_steps": 1, "eval_steps": 0, "save_steps": 0, "max_eval_batches": 1,
        "learning_rate": 1e-3, "warmup_ratio": 0.1, "report_to": "none", "bf16": True,
        "gradient_checkpointing": args.gradient_checkpointing, "torch_dtype": args.torch_dtype,
        "use_flash_attention": args.flash_attention, "verify_checksums": False,
    })


def run_trainer(args, model_dir: Path, manifest: Path, output_dir: Path) -> dict:
    """The real cpt-train loop; tokens/s from its metrics.jsonl, steps after the warmup."""
    from accelerate.state import AcceleratorState, GradientState

    from trainer.logs import read_metrics
    from trainer.loop import build_run, fit

    config = make_config(args, model_dir, output_dir)
    config.training.overwrite_output_dir = True
    _reset_peak(args)
    try:
        summary = fit(build_run(config, manifest))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    records = [r for r in read_metrics(output_dir / "logs" / "metrics.jsonl") if "loss" in r and r["step"] > args.warmup]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in records)
    seconds = sum(r["step_time_s"] for r in records)
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / len(records), "losses": [r["loss"] for r in records],
            "peak_gib": _peak_gib(args), "summary": summary}


def _reset_peak(args) -> None:
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(args) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")


def run_bare(args, model_dir: Path, manifest: Path, *, breakdown: bool = False) -> dict:
    """A plain PyTorch loop: same model, batches, optimizer, schedule, accumulation and loss."""
    from transformers import AutoModelForCausalLM, get_scheduler

    from trainer.data import IGNORE_INDEX, PackedWindows
    from trainer.mixture import MixtureLoader, MixtureSource
    from trainer.modeling import attention_implementation, causal_lm_loss_sum
    from trainer.optim import parameter_groups
    from trainer.verify import load_verified_manifest

    device = torch.device(args.device)
    torch.manual_seed(42)
    _reset_peak(args)
    dtype = torch.float32 if args.device == "cpu" or args.torch_dtype == "float32" else getattr(torch, args.torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attention_implementation(args.flash_attention, device.type)
    ).to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.01), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=math.ceil(0.1 * args.steps), num_training_steps=args.steps)
    manifest_obj, folder = load_verified_manifest(manifest, checksums=False)
    windows = PackedWindows(manifest_obj, folder, "train", max_length=args.max_length)
    loader = MixtureLoader([MixtureSource(name="shards", windows=windows, weight=1.0, sha256="")],
                           batch_size=args.batch_size, accumulation=args.grad_accum, seed=42)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    sync = torch.cuda.synchronize if (breakdown and device.type == "cuda") else (lambda: None)
    times, parts, tokens_per_step, losses = [], {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0}, [], []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        window = loader.next_step().micro_batches
        total = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
        t1 = time.perf_counter()
        loss_step = torch.zeros((), device=device)
        for batch in window:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                loss_sum, _ = causal_lm_loss_sum(model, batch)
            (loss_sum / total).backward()
            loss_step += loss_sum.detach() / total
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss_step))  # a sync per step, as the trainer's per-step logging does
        t3 = time.perf_counter()
        if step > args.warmup:
            times.append(t3 - t0)
            tokens_per_step.append(sum(b["input_ids"].numel() for b in window))
            parts["data"] += t1 - t0
            parts["forward_backward"] += t2 - t1
            parts["optimizer"] += t3 - t2
    seconds = sum(times)
    return {"tokens_per_s": sum(tokens_per_step) / seconds, "step_s": seconds / len(times),
            "parts_ms": {k: 1000 * v / len(times) for k, v in parts.items()}, "losses": losses[args.warmup:],
            "peak_gib": _peak_gib(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of both measurements")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--grad_accum", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch_dtype", default="float32", help="weights dtype on GPU (float32 = fp32 master weights + bf16 autocast)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--flash_attention", action="store_true")
    parser.add_argument("--model", type=Path, help="model folder (default: a fresh tiny Qwen2)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the bundled Qwen2 tokenizer)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import logging

    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.tokenizer is None:
        from schemas.tokenizer import bundled_tokenizer_dir

        args.tokenizer = bundled_tokenizer_dir()
    model_dir = args.model
    if model_dir is None:
        sys.path.insert(0, str(REPO / "data"))
        from make_tiny_model import make_tiny_model

        model_dir = workdir / "tiny-qwen2"
        if not (model_dir / "config.json").exists():
            make_tiny_model(model_dir, tokenizer_dir=args.tokenizer)
    tokens_needed = args.steps * args.grad_accum * args.batch_size * args.max_length
    manifest = workdir / "shards" / "manifest.json"
    if not manifest.exists():
        write_dataset(manifest.parent, tokenizer_dir=args.tokenizer, num_tokens=int(tokens_needed * 1.2) + 4096, seed=0)

    trainer_runs, bare_runs = [], []
    for i in range(args.repeats):
        # ABBA order: a load that drifts during the run (shared CPU) favours neither side.
        if i % 2 == 0:
            trainer_runs.append(run_trainer(args, model_dir, manifest, workdir / f"run{i}"))
            bare_runs.append(run_bare(args, model_dir, manifest))
        else:
            bare_runs.append(run_bare(args, model_dir, manifest))
            trainer_runs.append(run_trainer(args, model_dir, manifest, workdir / f"run{i}"))
        print(f"repeat {i + 1}: trainer {trainer_runs[-1]['tokens_per_s']:,.0f} tok/s, bare {bare_runs[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    breakdown = run_bare(args, model_dir, manifest, breakdown=True)

    t_best = max(r["tokens_per_s"] for r in trainer_runs)
    b_best = max(r["tokens_per_s"] for r in bare_runs)
    t_med = statistics.median(r["tokens_per_s"] for r in trainer_runs)
    b_med = statistics.median(r["tokens_per_s"] for r in bare_runs)
    same_losses = all(np.allclose(t["losses"], b["losses"], rtol=2e-2) for t, b in zip(trainer_runs, bare_runs))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    tokens_per_step = args.batch_size * args.max_length * args.grad_accum
    print(f"\ndevice: {device_name}; tiny Qwen2 (9.8M params, vocab 151,680); {args.batch_size} x {args.max_length} tokens "
          f"x {args.grad_accum} micro-batches = {tokens_per_step} tokens/step; {args.steps} steps, first {args.warmup} left out; "
          f"{args.repeats} repeats in ABBA order")
    print(f"{'':10} {'best tok/s':>12} {'median tok/s':>13} {'ms/step (best run)':>19} {'peak GiB':>9}")
    print(f"{'trainer':10} {t_best:12,.0f} {t_med:13,.0f} {1000 * min(r['step_s'] for r in trainer_runs):19.1f} {trainer_runs[-1]['peak_gib']:9.2f}")
    print(f"{'bare loop':10} {b_best:12,.0f} {b_med:13,.0f} {1000 * min(r['step_s'] for r in bare_runs):19.1f} {bare_runs[-1]['peak_gib']:9.2f}")
    print(f"trainer / bare: {t_best / b_best:.3f} (best), {t_med / b_med:.3f} (median); target >= 0.95")
    print("bare step breakdown (synchronised pass), ms: " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown["parts_ms"].items()))
    print(f"same losses in both loops (rtol 2e-2): {same_losses}")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device_name, "trainer_tokens_per_s": [r["tokens_per_s"] for r in trainer_runs],
            "bare_tokens_per_s": [r["tokens_per_s"] for r in bare_runs], "ratio_best": t_best / b_best,
            "peak_gib": {"trainer": trainer_runs[-1]["peak_gib"], "bare": bare_runs[-1]["peak_gib"]},
            "ratio_median": t_med / b_med, "breakdown_ms": breakdown["parts_ms"], "args": {k: str(v) for k, v in vars(args).items()},
        }, indent=2))


if __name__ == "__main__":
    main()
