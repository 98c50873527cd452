"""Model FLOPs utilisation (MFU): FLOPs per token, the device's peak, and the ratio.

- FLOPs per trained token = 6 x N + 12 x layers x hidden x sequence (PaLM, appendix B; the count
  torchtitan and Megatron report MFU with): 6N for the forward (2N) and backward (4N) matrix products
  over the N parameters that take part in one, 12 L h s for the attention scores and their weighted
  sum (QK^T and AV, forward and backward) at the full window length s = max_length. With document
  masking the attention does less work than that; like the published figures, the count ignores it.
- N counts every parameter that multiplies an activation: a tied input embedding is counted once (it
  is the output projection); an untied one is left out, since its lookup does no arithmetic.
  Qwen2.5-1.5B at s = 4096: N = 1.54e9, 6N + 12 L h s = 11.4 GFLOP per token.
- The peak is the device's dense (no sparsity) bf16 tensor throughput from `PEAK_TFLOPS`, by
  `torch.cuda.get_device_name`; `training.peak_tflops` overrides it. No peak on CPU or on an unknown
  device: MFU is then not reported (tokens/s always is).
- MFU = tokens/s per device x FLOPs per token / peak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

FORMULA = "6 x parameters + 12 x layers x hidden x sequence"

# Dense bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets (the sparse figures are twice
# these). Matched in order, as whole words, against the lower-cased device name ("NVIDIA H100 80GB
# HBM3" is an H100 SXM, "NVIDIA A100-SXM4-80GB" an A100), so the specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("gh200", 989.0),
    ("h200", 989.0),
    ("h100", 989.0),  # SXM
    ("h800", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("a10", 125.0),
)


@dataclass(frozen=True)
class FlopCount:
    """The FLOP count of one trained token and what it was computed from."""

    flops_per_token: float
    num_params: int  # N of the 6N term
    num_layers: int
    hidden_size: int
    seq_len: int

    def describe(self) -> str:
        return (f"{FORMULA} = 6 x {self.num_params:,} + 12 x {self.num_layers} x {self.hidden_size} x {self.seq_len} "
                f"= {self.flops_per_token / 1e9:.2f} GFLOP/token")


def count_flops(model: Any, *, seq_len: int) -> FlopCount:
    """FLOPs per trained token of `model` (unwrapped, before sharding) at windows of `seq_len` tokens."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    params = {id(p): p.numel() for p in model.parameters()}
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    if embedding is not None and (output is None or output.weight is not embedding.weight):
        params.pop(id(embedding.weight), None)  # untied: a lookup, no arithmetic
    num_params = sum(params.values())
    layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    return FlopCount(6.0 * num_params + 12.0 * layers * hidden * seq_len, num_params, layers, hidden, seq_len)


def device_peak_tflops(device: torch.device, override: Optional[float] = None) -> tuple[Optional[float], str]:
    """(dense bf16 peak TFLOP/s per device, where it came from); (None, why) when there is none."""
    if override is not None:
        return override, "training.peak_tflops"
    if device.type != "cuda":
        return None, f"no peak for {device.type} (set training.peak_tflops to report MFU)"
    name = torch.cuda.get_device_name(device)
    peak = peak_for_name(name)
    if peak is None:
        return None, f"{name} is not in trainer/flops.py's table (set training.peak_tflops to report MFU)"
    return peak, name


def peak_for_name(device_name: str) -> Optional[float]:
    """The first entry of PEAK_TFLOPS whose key is a whole word (or words) of `device_name`."""
    lowered = device_name.lower()
    for key, tflops in PEAK_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", lowered):
            return tflops
    return None


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Achieved model FLOP/s over the peak, as a fraction; None without a peak."""
    if not peak_tflops:
        return None
    return tokens_per_s_per_device * flops_per_token / (peak_tflops * 1e12)
