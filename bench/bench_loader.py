"""Data-loader throughput over what training consumes, measured side by side in one run.

Writes a synthetic token data set (real Arrow shards + manifest, documents of log-normal length,
~500 tokens on average), then times
  1. the training loader (`MixtureLoader`, one source) producing an epoch of packed batches (tokens/s of batches, memory-mapped shards),
  2. a forward + backward (`causal_lm_loss_sum`) of the tiny Qwen2 model on the first of those
     same batches (tokens/s consumed),
and prints both and their ratio (must be >> 1: the loader never starves training).

    .venv/bin/python bench/bench_loader.py [--num_tokens 20000000] [--max_length 1024] [--batch_size 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def write_dataset(folder: Path, *, num_tokens: int, seed: int) -> Path:
    """Synthetic documents (random ids, log-normal lengths) as real shards + manifest; returns its path."""
    from transformers import AutoTokenizer

    from pipeline.shards import write_token_dataset
    from pipeline.tokenize.load import tokenizer_info
    from schemas.tokenizer import bundled_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))
    rng = np.random.default_rng(seed)

    def documents():
        written = 0
        while written < num_tokens:
            n = int(min(max(rng.lognormal(mean=5.8, sigma=1.0), 1), 32_000))
            yield rng.integers(0, 151_000, size=n, dtype=np.uint32)  # below every control-token id
            written += n + 1

    return write_token_dataset(folder, {"train": documents()},
                               tokenizer=tokenizer_info(tok, name_or_path=str(bundled_tokenizer_dir())),
                               target_bytes=32 * 2**20, note="synthetic benchmark data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_tokens", type=int, default=20_000_000, help="tokens in the synthetic train split")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--train_steps", type=int, default=3, help="forward+backward steps timed (after 1 warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import importlib.util

    from schemas.config import ModelConfig
    from trainer.data import PackedWindows
    from trainer.mixture import MixtureLoader, MixtureSource
    from trainer.modeling import causal_lm_loss_sum, load_model
    from trainer.verify import load_verified_manifest

    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO / "data" / "make_tiny_model.py")
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifest_path = write_dataset(tmp / "shards", num_tokens=args.num_tokens, seed=0)
        manifest, folder = load_verified_manifest(manifest_path, checksums=False)
        print(f"data: {manifest.splits['train'].num_tokens:,} tokens, {manifest.splits['train'].num_documents:,} documents, "
              f"{len(manifest.splits['train'].shards)} shards (written in {time.perf_counter() - t0:.1f} s)")

        t0 = time.perf_counter()
        windows = PackedWindows(manifest, folder, "train", max_length=args.max_length)
        open_s = time.perf_counter() - t0
        loader = MixtureLoader([MixtureSource(name="shards", windows=windows, weight=1.0, sha256="")],
                               batch_size=args.batch_size, accumulation=1, seed=0)
        t0 = time.perf_counter()
        num_batches = 0
        first_batches = []
        for _ in range(windows.num_windows // args.batch_size):
            (batch,) = loader.next_step().micro_batches
            if len(first_batches) < args.train_steps + 1:
                first_batches.append(batch)
            num_batches += 1
        loader_s = time.perf_counter() - t0
        loader_tps = num_batches * args.batch_size * args.max_length / loader_s
        print(f"loader: opened {windows.num_windows:,} windows in {open_s * 1e3:.0f} ms; one epoch = {num_batches:,} batches of "
              f"{args.batch_size}x{args.max_length} in {loader_s:.2f} s = {loader_tps:,.0f} tokens/s")

        model_dir = make_tiny.make_tiny_model(tmp / "tiny")
        device_type = torch.device(args.device).type
        model = load_model(ModelConfig(model_name_or_path=str(model_dir)), device_type=device_type, bf16=True, gradient_checkpointing=False)
        model.to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch):
            batch = {k: v.to(args.device, non_blocking=True) for k, v in batch.items()}
            loss_sum, count = causal_lm_loss_sum(model, batch)
            (loss_sum / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss_sum

        step(first_batches[0]).item()  # warm-up (allocations, kernels)
        if device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for batch in first_batches[1:]:
            last = step(batch)
        last.item()
        if device_type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        train_tps = len(first_batches[1:]) * args.batch_size * args.max_length / train_s
        print(f"training: tiny Qwen2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {device_type}, "
              f"{next(model.parameters()).dtype}) forward+backward+AdamW on {len(first_batches) - 1} of the same batches = {train_tps:,.0f} tokens/s")
        print(f"ratio loader/training = {loader_tps / train_tps:,.1f}x (must be >> 1)")


if __name__ == "__main__":
    main()
