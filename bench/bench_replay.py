"""Does replay of general data limit forgetting in continued pretraining? An effect benchmark (CPU,
a few minutes), run through the real `cpt-prep build` and `cpt-train`.

1. Data from the bundled sample (`data/sample/`): "general" = its English prose paragraphs,
   "domain" = its Chinese reviews (mixed-language lines left out), each split into train and eval
   (eval: the held-out documents of eval.txt and extra.jsonl.gz; `cpt-prep build --eval` drops the
   training documents that overlap them).
2. A small byte-level BPE tokenizer (4,096 tokens, `<|endoftext|>` as separator) trained on both
   train splits, and a small random Qwen2 model (width 128, 4 layers): the bundled Qwen2
   vocabulary of 151k tokens would make a CPU step ~40x slower.
3. Pretrain on general (domain evaluated only: weight 0), cosine schedule.
4. From that model, three CPT runs with the same token budget and schedule (re-warm, re-decay, as
   Ibrahim et al. 2024 do): domain with 0%, 5% and 25% replay of general. With 0% general is
   still evaluated (an eval-only source).
5. A table: general and domain eval loss before (the pretrained model, step 0 of each CPT run) and
   after each CPT run.

    flock /tmp/cpt-bench.lock .venv/bin/python bench/bench_replay.py [--workdir bench_out/replay] [--seeds 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
sys.path.insert(0, str(REPO))

SEPARATOR = "<|endoftext|>"


def script_of(text: str) -> str:
    """en (Latin letters only), zh (at least 80% of letters Han) or mixed."""
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    if han == 0 and latin >= 20:
        return "en"
    if han >= 10 and han >= 0.8 * (han + latin):
        return "zh"
    return "mixed"


def split_sample(folder: Path) -> dict[str, dict[str, Path]]:
    """Write {en,zh}_{train,eval}.txt (one document per line) from the bundled sample."""
    folder.mkdir(parents=True, exist_ok=True)
    train = (SAMPLE / "train.txt").read_text(encoding="utf-8").splitlines()
    held_out = (SAMPLE / "eval.txt").read_text(encoding="utf-8").splitlines()
    with gzip.open(SAMPLE / "extra.jsonl.gz", "rt", encoding="utf-8") as f:
        held_out += [json.loads(line)["text"] for line in f if line.strip()]
    out: dict[str, dict[str, Path]] = {"en": {}, "zh": {}}
    for split, lines in (("train", train), ("eval", held_out)):
        for lang in out:
            path = folder / f"{lang}_{split}.txt"
            path.write_text("".join(line.strip() + "\n" for line in lines if line.strip() and script_of(line) == lang), encoding="utf-8")
            out[lang][split] = path
    return out


def make_tokenizer_and_model(folder: Path, texts: list[Path], *, vocab_size: int, seed: int) -> Path:
    """A byte-level BPE trained on `texts` and a random small Qwen2 model, saved together."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEPARATOR], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(p) for p in texts], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=SEPARATOR)
    sep = tokenizer.convert_tokens_to_ids(SEPARATOR)
    config = Qwen2Config(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=sep, eos_token_id=sep)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code:
        sys.exit(f"{' '.join(cmd[:4])} ... failed (exit {code}); see {log}")


def build(name: str, paths: dict[str, Path], tokenizer: Path, out: Path, log_dir: Path) -> Path:
    run([sys.executable, "-m", "pipeline", "build", str(paths["train"]), "--eval", str(paths["eval"]), "--tokenizer", str(tokenizer),
         "--output", str(out / name), "--overwrite", "--no_progress", "--workers", "2"], log_dir / f"build_{name}.log")
    return out / name / "manifest.json"


def train(manifests: list[Path], weights: list[float], model: Path, out: Path, log: Path, *, args, steps: int, seed: int) -> list[dict]:
    flags = {
        "model_name_or_path": model, "output_dir": out, "mixture_weights": ",".join(f"{w:g}" for w in weights),
        "max_length": args.max_length, "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": 1,
        "max_tokens": steps * args.batch_size * args.max_length, "learning_rate": args.learning_rate, "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.05, "min_lr_ratio": 0.1, "weight_decay": 0.1, "logging_steps": 10, "eval_steps": 0, "save_steps": 0,
        "per_device_eval_batch_size": 16, "max_eval_batches": 0, "max_repetitions": 20, "seed": seed, "report_to": "none",
        "gradient_checkpointing": "false", "bf16": "false", "torch_dtype": "float32", "overwrite_output_dir": "true",
        "use_flash_attention": "false",
    }
    cmd = [sys.executable, "-m", "trainer"] + [a for m in manifests for a in ("--manifest", str(m))]
    for key, value in flags.items():
        cmd += [f"--{key}", str(value)]
    run(cmd, log)
    from trainer.logs import read_metrics

    return read_metrics(out / "logs" / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "bench_out" / "replay")
    parser.add_argument("--replay", default="0,0.05,0.25", help="shares of general data in the CPT runs")
    parser.add_argument("--seeds", default="0", help="data-order seeds of the CPT runs (comma-separated): each share runs once per seed")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--cpt_steps", type=int, default=150)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--vocab_size", type=int, default=4096)
    args = parser.parse_args()
    work = args.workdir
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    texts = split_sample(work / "text")
    model0 = make_tokenizer_and_model(work / "model-init", [texts["en"]["train"], texts["zh"]["train"]], vocab_size=args.vocab_size, seed=0)
    general = build("general", texts["en"], model0, work / "shards", logs)
    domain = build("domain", texts["zh"], model0, work / "shards", logs)
    for name, path in (("general", general), ("domain", domain)):
        splits = json.loads(path.read_text())["splits"]
        print(f"{name}: {splits['train']['num_tokens']:,} train tokens ({splits['train']['num_documents']} documents), "
              f"{splits['eval']['num_tokens']:,} eval tokens", flush=True)

    tokens_per_step = args.batch_size * args.max_length
    pre = train([general, domain], [1, 0], model0, work / "pretrain", logs / "pretrain.log", args=args, steps=args.pretrain_steps, seed=0)
    print(f"pretrain on general: {args.pretrain_steps} steps x {tokens_per_step} tokens; general eval loss "
          f"{pre[0]['eval_loss/general']:.3f} -> {pre[-1]['eval_loss/general']:.3f}, domain {pre[0]['eval_loss/domain']:.3f} -> "
          f"{pre[-1]['eval_loss/domain']:.3f} ({time.perf_counter() - t0:.0f} s so far)", flush=True)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for share in [float(s) for s in args.replay.split(",")]:
            out = work / f"cpt-replay{share:g}-seed{seed}"
            records = train([domain, general], [1 - share, share], work / "pretrain" / "final_model", out, logs / f"{out.name}.log",
                            args=args, steps=args.cpt_steps, seed=seed)
            first, last = records[0], records[-1]
            tokens = {n: last.get(f"tokens/{n}", 0) for n in ("domain", "general")}
            rows.append((share, seed, first, last, tokens))
            print(f"replay {share:.0%} (seed {seed}): general {first['eval_loss/general']:.3f} -> {last['eval_loss/general']:.3f}, "
                  f"domain {first['eval_loss/domain']:.3f} -> {last['eval_loss/domain']:.3f} ({time.perf_counter() - t0:.0f} s so far)", flush=True)

    print(f"\nCPT: {args.cpt_steps} steps x {tokens_per_step} tokens = {args.cpt_steps * tokens_per_step:,} tokens per run, cosine, "
          f"lr {args.learning_rate:g} re-warmed over 5% and decayed to 10%; eval losses in nats/token over each whole eval split\n")
    print("| replay | seed | general eval loss before -> after | domain eval loss before -> after | tokens domain / general |")
    print("|---|---|---|---|---|")
    for share, seed, first, last, tokens in rows:
        g0, g1, d0, d1 = first["eval_loss/general"], last["eval_loss/general"], first["eval_loss/domain"], last["eval_loss/domain"]
        print(f"| {share:.0%} | {seed} | {g0:.3f} -> {g1:.3f} ({g1 - g0:+.3f}) | {d0:.3f} -> {d1:.3f} ({d1 - d0:+.3f}) | "
              f"{tokens['domain']:,} / {tokens['general']:,} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; logs in {logs}")


if __name__ == "__main__":
    main()
