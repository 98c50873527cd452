"""cpt-train's training throughput and MFU, and its ratio to a bare PyTorch loop, side by side in one run.

The model (default): Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate
8960, vocab 151,936, tied embeddings) with random weights, windows of `--max_length` 4096 tokens packed
from documents of varied lengths (log-normal, median ~400 tokens, mean ~800, up to 32k: several
documents per window, some split across windows, so the document mask matters), fp32 master weights
under bf16 autocast, AdamW. `--tiny` uses the tiny Qwen2 of data/tiny-qwen2.json instead (CPU checks).

The levers (config keys, trainer/modeling.py and trainer/optim.py) are on unless `--set` turns one
off: attention `auto` (the fastest exact kernel here), per-layer torch.compile (CUDA), fused
projection + cross-entropy, fused AdamW (CUDA); gradient checkpointing off (the 1.5B shape fits).
`--set key=value,...` changes config keys for both loops, e.g. `--set torch_compile=false`.

Both loops get the same model (loaded by `trainer.modeling.load_model` from the same folder: same
weights, attention kernel, compiled layers, checkpointing), the same batches (the trainer's
MixtureLoader order over the same memory-mapped shards; data loading is timed in both), the same
optimizer (`trainer.optim.build_optimizer`), schedule, accumulation (loss summed per micro-batch,
divided by the step's target-token count), clipping and loss (`causal_lm_loss_sum`). The trainer
side is the real `cpt-train` (`build_run` + `fit`, logging every step, eval and saves excluded);
its tokens/s is read back from its logs/metrics.jsonl. Steps before `--warmup` (compilation) are
left out of both. Runs alternate in ABBA order `--repeats` times; best and median are printed.
MFU = tokens/s x (6 x parameters + 12 x layers x hidden x sequence) / the device's dense bf16 peak
(trainer/flops.py). `--trainer_only` skips the bare loop (lever sweeps: bench/gpu_check.sh);
`--jsonl` appends one record per run as it finishes.

    .venv/bin/python bench/bench_train.py --device cpu --tiny --steps 6 --warmup 2 --repeats 2
    python bench/bench_train.py --device cuda                       # Qwen2.5-1.5B shape, 4 x 4096 x 2 tokens/step
    python bench/bench_train.py --device cuda --trainer_only --set attention=sdpa
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

QWEN25_15B = {"vocab_size": 151_936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
              "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True,
              "max_position_embeddings": 32_768, "rope_theta": 1_000_000.0}


def write_dataset(folder: Path, *, tokenizer_dir: Path, num_tokens: int, seed: int, max_length: int) -> tuple[Path, dict]:
    """Random-id documents of log-normal lengths as real shards + manifest; (manifest, length stats)."""
    from transformers import AutoTokenizer

    from pipeline.shards import write_token_dataset
    from pipeline.tokenize.load import tokenizer_info

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng = np.random.default_rng(seed)
    lengths: list[int] = []

    def documents(budget: int, record: bool):
        written = 0
        while written < budget:
            n = int(min(max(rng.lognormal(mean=6.0, sigma=1.2), 16), 32_768))
            if record:
                lengths.append(n + 1)
            yield rng.integers(0, 151_000, size=n, dtype=np.uint32)  # below every control-token id
            written += n + 1

    manifest = write_token_dataset(folder, {"train": documents(num_tokens, True), "eval": documents(2048, False)},
                                   tokenizer=tokenizer_info(tok, name_or_path=str(tokenizer_dir)),
                                   target_bytes=32 * 2**20, note="synthetic benchmark data")
    stats = {"documents": len(lengths), "median_tokens": float(np.median(lengths)), "mean_tokens": float(np.mean(lengths)),
             "max_tokens": int(max(lengths)), "segments_per_window": (len(lengths) + sum(lengths) / max_length) / (sum(lengths) / max_length)}
    return manifest, stats


def parse_set(text: str) -> dict[str, str]:
    """`key=value,key=value` -> {key: value} (config keys, as flags name them)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise SystemExit(f"--set {text!r}: expected key=value pairs separated by commas")
        out[key] = value
    return out


def make_config(args, model_dir: Path, output_dir: Path):
    from schemas.config import CptConfig

    return CptConfig().with_overrides({
        "model_name_or_path": str(model_dir), "output_dir": str(output_dir), "max_length": args.max_length,
        "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": args.grad_accum,
        "max_steps": args.steps, "logging_steps": 1, "eval_steps": 0, "save_steps": 0, "max_eval_batches": 1,
        "learning_rate": 1e-3, "warmup_ratio": 0.1, "report_to": "none", "bf16": True, "spike_guard": False,
        "gradient_checkpointing": False, "torch_compile": args.device == "cuda", "torch_dtype": args.torch_dtype,
        "verify_checksums": False, **args.overrides,
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
        run = build_run(config, manifest)
        attention = run.accelerator.unwrap_model(run.model).config._attn_implementation
        summary = fit(run)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    records = [r for r in read_metrics(output_dir / "logs" / "metrics.jsonl") if "loss" in r and r["step"] > args.warmup]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in records)
    seconds = sum(r["step_time_s"] for r in records)
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / len(records), "losses": [r["loss"] for r in records],
            "peak_gib": _peak_gib(args), "flops_per_token": summary["flops_per_token"], "peak_tflops": summary["peak_tflops"],
            "peak_source": summary["peak_source"], "attention": attention}


def _reset_peak(args) -> None:
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(args) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")


def run_bare(args, model_dir: Path, manifest: Path, *, breakdown: bool = False) -> dict:
    """A plain PyTorch loop: same model, batches, optimizer, schedule, accumulation and loss."""
    from transformers import get_scheduler

    from trainer.data import IGNORE_INDEX, PackedWindows
    from trainer.mixture import MixtureLoader, MixtureSource
    from trainer.modeling import causal_lm_loss_sum, load_model
    from trainer.optim import build_optimizer
    from trainer.verify import load_verified_manifest

    config = make_config(args, model_dir, Path(tempfile.gettempdir()) / "unused")
    tc, device = config.training, torch.device(args.device)
    torch.manual_seed(42)
    _reset_peak(args)
    model = load_model(config.model, device_type=device.type, bf16=tc.bf16, gradient_checkpointing=tc.gradient_checkpointing,
                       checkpoint_every=tc.checkpoint_every, compile_layers=tc.torch_compile).to(device)
    model.train()
    optimizer = build_optimizer(model, tc, device_type=device.type)
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
                loss_sum, _ = causal_lm_loss_sum(model, batch, fused=tc.fused_linear_cross_entropy)
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
    result = {"tokens_per_s": sum(tokens_per_step) / seconds, "step_s": seconds / len(times),
              "parts_ms": {k: 1000 * v / len(times) for k, v in parts.items()}, "losses": losses[args.warmup:],
              "peak_gib": _peak_gib(args)}
    del model, optimizer
    return result


def _mfu(result: dict) -> float | None:
    from trainer.flops import mfu

    return mfu(result["tokens_per_s"], result["flops_per_token"], result["peak_tflops"])


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def prepare(args) -> tuple[Path, Path, dict]:
    """The model folder (made once per workdir) and the shards (made once per workdir and shape)."""
    if args.tokenizer is None:
        from schemas.tokenizer import bundled_tokenizer_dir

        args.tokenizer = bundled_tokenizer_dir()
    model_dir = args.model
    if model_dir is None:
        sys.path.insert(0, str(REPO / "data"))
        from make_tiny_model import make_tiny_model

        model_dir = args.workdir / ("tiny-qwen2" if args.tiny else "qwen2.5-1.5b-shape")
        if not (model_dir / "config.json").exists():
            t0 = time.perf_counter()
            make_tiny_model(model_dir, tokenizer_dir=args.tokenizer, shape=None if args.tiny else QWEN25_15B,
                            dtype=None if args.tiny else "bfloat16")
            print(f"made {model_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    tokens_needed = args.steps * args.grad_accum * args.batch_size * args.max_length * max(args.repeats, 1)
    shards = args.workdir / f"shards-{args.max_length}"
    stats_path = shards / "length_stats.json"
    if not (shards / "manifest.json").exists():
        manifest, stats = write_dataset(shards, tokenizer_dir=args.tokenizer, num_tokens=int(tokens_needed * 1.2) + 4096,
                                        seed=0, max_length=args.max_length)
        stats_path.write_text(json.dumps(stats))
    return model_dir, shards / "manifest.json", json.loads(stats_path.read_text())


def summarize(path: Path) -> None:
    """The --jsonl records side by side: tokens/s, MFU, peak memory, and each against the first record
    (all levers on)."""
    from trainer.logs import read_metrics

    records = read_metrics(path)
    if not records:
        print(f"no records in {path}")
        return
    base = max(records[0]["trainer_tokens_per_s"])
    print(f"device: {records[0]['device']}; {records[0]['shape']}; {records[0]['tokens_per_step']:,} tokens/step unless named")
    print(f"{'configuration':52} {'attention':>15} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9} {'vs first':>9}")
    for r in records:
        best = max(r["trainer_tokens_per_s"])
        print(f"{r['label'][:52]:52} {r['attention']:>15} {best:9,.0f} {_pct(r['trainer_mfu']):>6} {r['trainer_peak_gib']:9.1f} {best / base:9.3f}")
    first = records[0]
    if "ratio_best" in first:
        print(f"trainer / bare loop ({first['label']}): {first['ratio_best']:.3f} best, {first['ratio_median']:.3f} median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="the tiny Qwen2 of data/tiny-qwen2.json instead of Qwen2.5-1.5B's shape")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of both measurements (compilation)")
    parser.add_argument("--max_length", type=int, help="default 4096 (128 with --tiny)")
    parser.add_argument("--batch_size", type=int, help="windows per micro-batch; default 4 (2 with --tiny)")
    parser.add_argument("--grad_accum", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--torch_dtype", default="bfloat16", help="model.torch_dtype (bfloat16 + bf16 = fp32 master weights + bf16 autocast)")
    parser.add_argument("--set", dest="overrides", type=parse_set, default={}, help="config keys for both loops: key=value,...")
    parser.add_argument("--trainer_only", action="store_true", help="no bare loop (lever sweeps)")
    parser.add_argument("--label", default="", help="name of this configuration in the output and --jsonl")
    parser.add_argument("--model", type=Path, help="model folder (default: made in --workdir)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the bundled Qwen2 tokenizer)")
    parser.add_argument("--workdir", type=Path, help="model, shards and run folders (kept: reuse across invocations)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--jsonl", type=Path, help="append one record per configuration here")
    parser.add_argument("--summarize", type=Path, metavar="JSONL", help="print the configurations of a --jsonl file side by side, then exit")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    args.max_length = args.max_length or (128 if args.tiny else 4096)
    args.batch_size = args.batch_size or (2 if args.tiny else 4)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import logging

    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir, manifest, lengths = prepare(args)
    label = args.label or (",".join(f"{k}={v}" for k, v in args.overrides.items()) or "all levers on")
    run_dir = args.workdir / ("run-" + "".join(c if c.isalnum() else "_" for c in label))

    trainer_runs, bare_runs = [], []
    for i in range(args.repeats):
        # ABBA order: a load that drifts during the run (shared CPU) favours neither side.
        order = ("trainer", "bare") if i % 2 == 0 else ("bare", "trainer")
        for side in order:
            if side == "trainer":
                trainer_runs.append(run_trainer(args, model_dir, manifest, run_dir))
            elif not args.trainer_only:
                bare_runs.append(run_bare(args, model_dir, manifest))
        line = f"repeat {i + 1}: trainer {trainer_runs[-1]['tokens_per_s']:,.0f} tok/s"
        print(line + (f", bare {bare_runs[-1]['tokens_per_s']:,.0f} tok/s" if bare_runs else ""), flush=True)
    breakdown = None if args.trainer_only else run_bare(args, model_dir, manifest, breakdown=True)

    best = max(trainer_runs, key=lambda r: r["tokens_per_s"])
    t_med = statistics.median(r["tokens_per_s"] for r in trainer_runs)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    shape = "tiny Qwen2 (data/tiny-qwen2.json)" if args.tiny else "Qwen2.5-1.5B shape (random weights)"
    tokens_per_step = args.batch_size * args.max_length * args.grad_accum
    print(f"\ndevice: {device_name}; {shape}; {label}; attention {best['attention']}; {args.batch_size} x {args.max_length} tokens "
          f"x {args.grad_accum} micro-batches = {tokens_per_step:,} tokens/step; {args.steps} steps, first {args.warmup} left out; "
          f"{args.repeats} repeat(s)")
    print(f"documents: median {lengths['median_tokens']:.0f} tokens, mean {lengths['mean_tokens']:.0f}, longest {lengths['max_tokens']:,}; "
          f"{lengths['segments_per_window']:.1f} document segments per window")
    print(f"MFU = tokens/s x {best['flops_per_token'] / 1e9:.2f} GFLOP/token (6 x parameters + 12 x layers x hidden x sequence) / "
          + (f"{best['peak_tflops']:g} TFLOP/s ({best['peak_source']})" if best["peak_tflops"] else best["peak_source"]))
    print(f"{'':10} {'best tok/s':>12} {'median tok/s':>13} {'MFU (best)':>11} {'ms/step (best run)':>19} {'peak GiB':>9}")
    print(f"{'trainer':10} {best['tokens_per_s']:12,.0f} {t_med:13,.0f} {_pct(_mfu(best)):>11} {1000 * best['step_s']:19.1f} {best['peak_gib']:9.2f}")
    record = {"label": label, "overrides": args.overrides, "device": device_name, "shape": shape, "attention": best["attention"],
              "tokens_per_step": tokens_per_step, "trainer_tokens_per_s": [r["tokens_per_s"] for r in trainer_runs],
              "trainer_mfu": _mfu(best), "trainer_peak_gib": best["peak_gib"], "flops_per_token": best["flops_per_token"],
              "peak_tflops": best["peak_tflops"], "documents": lengths, "args": {k: str(v) for k, v in vars(args).items()}}
    if bare_runs:
        b_best = max(r["tokens_per_s"] for r in bare_runs)
        b_med = statistics.median(r["tokens_per_s"] for r in bare_runs)
        bare_mfu = _mfu({**best, "tokens_per_s": b_best})
        print(f"{'bare loop':10} {b_best:12,.0f} {b_med:13,.0f} {_pct(bare_mfu):>11} {1000 * min(r['step_s'] for r in bare_runs):19.1f} "
              f"{bare_runs[-1]['peak_gib']:9.2f}")
        print(f"trainer / bare: {best['tokens_per_s'] / b_best:.3f} (best), {t_med / b_med:.3f} (median); target >= 0.95")
        print("bare step breakdown (synchronised pass), ms: " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown["parts_ms"].items()))
        same_losses = all(np.allclose(t["losses"], b["losses"], rtol=2e-2) for t, b in zip(trainer_runs, bare_runs))
        print(f"same losses in both loops (rtol 2e-2): {same_losses}")
        record.update({"bare_tokens_per_s": [r["tokens_per_s"] for r in bare_runs], "bare_peak_gib": bare_runs[-1]["peak_gib"],
                       "ratio_best": best["tokens_per_s"] / b_best, "ratio_median": t_med / b_med,
                       "breakdown_ms": breakdown["parts_ms"], "same_losses": same_losses})
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    if args.jsonl:
        with open(args.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
