"""`cpt-train` end to end through its CLI, on CPU, with the tiny Qwen2 model and the real tokenizer:
prep -> train, outputs, the model beats its step-0 eval loss, bad input exits 2 before weights load,
and the loss of an accumulated step equals one big batch's."""

from __future__ import annotations

import json
import random

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from schemas.config import load_config
from trainer.cli import main
from trainer.logs import read_metrics

TRAIN_FIELDS = {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "num_tokens", "tokens/shards", "skipped_steps"}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator; Accelerate keeps process-wide singletons."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def sentence_corpus(tokenizer, num_docs: int, *, seed: int) -> list[list[int]]:
    """Token ids of short, patterned English documents: easy to learn in a few steps."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the model", "my friend", "the river", "a teacher"]
    verbs = ["sees", "likes", "follows", "writes about", "remembers", "finds"]
    objects = ["the moon", "a small house", "the red book", "green trees", "the old road", "warm bread"]
    docs = []
    for _ in range(num_docs):
        text = " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(rng.randint(2, 6)))
        docs.append(tokenizer.encode(text))
    return docs


def _args(manifest, model_dir, out, **overrides):
    # torch_dtype float32: saved models keep the fp32 weights, so tests can recompute the logged
    # eval losses from them to 1e-5 (the default, bfloat16, is tested on its own).
    settings = {
        "model_name_or_path": model_dir, "output_dir": out, "max_length": 32, "batch_size": 2,
        "gradient_accumulation_steps": 2, "learning_rate": 5e-3, "warmup_ratio": 0.1, "bf16": "true",
        "gradient_checkpointing": "false", "report_to": "tensorboard", "torch_dtype": "float32",
    }
    settings.update(overrides)
    argv = ["--manifest", str(manifest)]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def test_prep_then_train_end_to_end(tmp_path, sample_manifest, tiny_model_dir, capsys):
    out = tmp_path / "run"
    code = main(_args(sample_manifest, tiny_model_dir, out, max_steps=8, logging_steps=2, eval_steps=4,
                      save_steps=4, save_total_limit=1, max_eval_batches=2, per_device_eval_batch_size=4, peak_tflops=0.5))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "eval loss:" in captured.out and "->" in captured.out  # the summary, on stdout
    assert "MFU" in captured.out and "peak 0.5 TFLOP/s per device, training.peak_tflops" in captured.out

    # Layout: resolved config, rotated step checkpoints, best and final model, logs.
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best_model", "checkpoint-step-8", "cpt_config.json", "final_model", "logs"], names
    resolved = load_config(out / "cpt_config.json")
    assert resolved.training.max_steps == 8 and resolved.model.max_length == 32
    manifest_config = json.loads(sample_manifest.read_text())["config"]
    assert resolved.data.min_length == manifest_config["min_length"]  # data keys come from the manifest

    records = read_metrics(out / "logs" / "metrics.jsonl")
    assert records[0]["step"] == 0 and "eval_loss" in records[0] and "loss" not in records[0]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8]
    assert all(TRAIN_FIELDS <= set(r) for r in train_records)
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in train_records)
    from transformers import AutoModelForCausalLM

    from trainer.flops import count_flops

    per_token = count_flops(AutoModelForCausalLM.from_pretrained(tiny_model_dir), seq_len=32).flops_per_token
    assert all(r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / 0.5e12) for r in train_records)
    eval_steps = [r["step"] for r in records if "eval_loss" in r]
    assert eval_steps == [0, 4, 8]
    assert all(r["eval_ppl"] == pytest.approx(2.718281828 ** r["eval_loss"], rel=1e-6) for r in records if "eval_loss" in r)
    assert (out / "logs" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"

    initial = records[0]["eval_loss"]
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    best_record = json.loads((out / "best_model" / "cpt_checkpoint.json").read_text())
    assert best_record["eval_loss"] == min(v for s, v in evals.items() if s > 0)
    final_record = json.loads((out / "final_model" / "cpt_checkpoint.json").read_text())
    assert final_record["global_step"] == 8 and final_record["initial_eval_loss"] == initial
    assert final_record["manifest"]["sha256"] and final_record["manifest"]["path"] == str(sample_manifest.resolve())
    assert json.loads((out / "checkpoint-step-8" / "cpt_checkpoint.json").read_text())["resumable"] is True

    # final_model is a plain transformers folder: it loads, beats the step-0 loss, and generates.
    from transformers import AutoTokenizer

    from trainer.data import PackedWindows, WindowLoader
    from trainer.modeling import causal_lm_loss_sum
    from trainer.verify import load_verified_manifest

    model = AutoModelForCausalLM.from_pretrained(out / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(out / "final_model")
    manifest, folder = load_verified_manifest(sample_manifest, checksums=False)
    loader = WindowLoader(PackedWindows(manifest, folder, "eval", max_length=32), batch_size=4)
    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == 2:  # the batches max_eval_batches=2 scored
                break
            loss_sum, n = causal_lm_loss_sum(model, batch)
            total, count = total + float(loss_sum), count + int(n)
    assert total / count == pytest.approx(evals[8], rel=1e-4)
    assert total / count < initial - 0.2, (initial, total / count)
    prompt = tokenizer("the cat", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5


def test_epoch_checkpoints_and_refusal_to_mix_runs(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir, capsys):
    # 8 docs of ~25 tokens -> 6 windows of 32 -> 2 windows per step -> 3 steps per epoch.
    manifest = write_token_dataset(tmp_path / "shards", train=sentence_corpus(qwen_tokenizer, 8, seed=1),
                                   eval=sentence_corpus(qwen_tokenizer, 2, seed=2))
    out = tmp_path / "run"
    assert main(_args(manifest, tiny_model_dir, out, num_train_epochs=2, save_steps=0, eval_steps=0, logging_steps=100,
                      gradient_accumulation_steps=1, report_to="none", torch_dtype="bfloat16")) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best_model", "checkpoint-epoch-1", "checkpoint-epoch-2", "cpt_config.json", "final_model", "logs"], names
    # Trained in fp32 on CPU, exported in model.torch_dtype (bfloat16 by default), as the README says.
    from safetensors import safe_open

    with safe_open(str(out / "final_model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "final_model" / "config.json").read_text())["dtype"] == "bfloat16"
    epoch1 = json.loads((out / "checkpoint-epoch-1" / "cpt_checkpoint.json").read_text())
    epoch2 = json.loads((out / "checkpoint-epoch-2" / "cpt_checkpoint.json").read_text())
    assert epoch1["epoch"] == 1.0 and epoch2["epoch"] == 2.0 and epoch2["global_step"] == 2 * epoch1["global_step"]
    assert epoch1["eval_loss"] is not None  # evaluated at each epoch end
    loader_state = json.loads((out / "checkpoint-epoch-1" / "loader_state_rank0.json").read_text())
    (source,) = loader_state["sources"]
    assert source["windows_drawn"] == source["num_windows"] == loader_state["positions"]  # resumes at the next pass's start
    capsys.readouterr()

    # A second run into the same output_dir is refused before any work (one line, exit 2).
    assert main(_args(manifest, tiny_model_dir, out, max_steps=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume_from_checkpoint latest" in err[0], err


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"min_length": 50}, "data.min_length=50 conflicts with the shards"),
        ({"resume_from_checkpoint": "latest"}, "no complete checkpoint"),
        ({"model_name_or_path": "/nonexistent/model"}, "does not exist"),
        # Checked against config.json before the weights load (the tiny model has 4096 positions).
        ({"max_length": 8192}, "model.max_length=8192 exceeds the max_position_embeddings=4096"),
    ],
)
def test_bad_input_exits_2_before_training(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir, capsys, extra, expected):
    manifest = write_token_dataset(tmp_path / "shards", train=sentence_corpus(qwen_tokenizer, 8, seed=1))
    out = tmp_path / "run"
    assert main(_args(manifest, tiny_model_dir, out, **extra)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err[-1000:]
    assert "Traceback" not in err
    assert not (out / "final_model").exists()


def test_unreachable_hub_fails_at_once_naming_the_model_flag(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir, capsys,
                                                             monkeypatch):
    """The default model (a hub name) on a machine that cannot reach the hub and has no cached copy:
    one line naming --model_name_or_path (the tokenizer comes from the model), no hub retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    manifest = write_token_dataset(tmp_path / "shards", train=sentence_corpus(qwen_tokenizer, 8, seed=1))
    argv = _args(manifest, tiny_model_dir, tmp_path / "run")
    argv[argv.index("--model_name_or_path") + 1] = "Qwen/Qwen2.5-7B"
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot be reached" in errors[0] and "pass --model_name_or_path a local folder" in errors[0], err[-2000:]
    assert "tokenizer_name_or_path" not in errors[0] and "Traceback" not in err


def test_corrupted_shard_exits_2(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir, capsys):
    manifest = write_token_dataset(tmp_path / "shards", train=sentence_corpus(qwen_tokenizer, 8, seed=1))
    shard = next((tmp_path / "shards").rglob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(_args(manifest, tiny_model_dir, tmp_path / "run")) == 2
    assert "sha256" in capsys.readouterr().err


def test_accumulated_loss_is_normalised_over_the_whole_batch(tmp_path, write_token_dataset, qwen_tokenizer, tiny_model_dir):
    """Two micro-batches with very different target counts, accumulated, give the gradients of one
    batch holding both (the mean over all target tokens), not the mean of the two micro-batch means."""
    from schemas.config import CptConfig
    from trainer.loop import build_run, count_targets, train_step

    manifest = write_token_dataset(tmp_path / "shards", train=sentence_corpus(qwen_tokenizer, 8, seed=1))
    config = CptConfig().with_overrides({
        "model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "max_length": 32,
        "gradient_accumulation_steps": 2, "max_grad_norm": 0, "gradient_checkpointing": False, "report_to": "none",
        "max_steps": 1,
    })
    run = build_run(config, manifest)
    grads: list[dict[str, torch.Tensor]] = []
    # Snapshot the gradients the optimizer is about to apply (a real optimizer hook, no patching).
    run.optimizer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append({n: p.grad.clone() for n, p in run.accelerator.unwrap_model(run.model).named_parameters()})
    )
    initial = {k: v.clone() for k, v in run.accelerator.unwrap_model(run.model).state_dict().items()}

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150_000, (4, 32), generator=gen)
    labels = ids.clone()
    labels[:2, 4:] = -100  # micro-batch 1: 2 x 3 targets
    labels[:, 0] = -100
    positions = torch.arange(32).repeat(4, 1)
    first = {"input_ids": ids[:2], "position_ids": positions[:2], "labels": labels[:2]}
    second = {"input_ids": ids[2:], "position_ids": positions[2:], "labels": labels[2:]}  # 2 x 31 targets
    whole = {"input_ids": ids, "position_ids": positions, "labels": labels}
    assert (count_targets(first), count_targets(second)) == (6, 62)

    def step(window):
        run.accelerator.unwrap_model(run.model).load_state_dict(initial)
        result = train_step(run, window)
        assert result.skipped is None
        return result.loss

    loss_accumulated = step([first, second])
    loss_whole = step([whole])
    assert loss_accumulated == pytest.approx(loss_whole, rel=1e-5)
    accumulated, big = grads
    for name, grad in big.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7)

    # The test can fail: averaging the micro-batch means would give a clearly different gradient.
    step([first]), step([second])
    naive_grad = {n: (grads[2][n] + grads[3][n]) / 2 for n in big}
    name = "model.embed_tokens.weight"
    assert (naive_grad[name] - big[name]).norm() > 0.1 * big[name].norm()


def test_bf16_autocast_keeps_logits_in_bf16(tiny_model_dir):
    """Accelerate casts a bf16-autocast model's outputs to fp32 (a float32 copy of [B, L, vocab]
    logits and of their gradient); the trainer removes that cast and keeps autocast. Pinned here
    because it relies on how Accelerate wraps `forward`."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from trainer.build import keep_low_precision_outputs
    from trainer.modeling import causal_lm_loss_sum

    acc = Accelerator(cpu=True, mixed_precision="bf16")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model, _ = acc.prepare(model, torch.optim.AdamW(model.parameters()))
    batch = {"input_ids": torch.randint(0, 1000, (1, 8)), "position_ids": torch.arange(8)[None]}
    batch["labels"] = batch["input_ids"]
    assert model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits.dtype == torch.float32
    assert keep_low_precision_outputs(acc, model) is True
    assert model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits.dtype == torch.bfloat16
    loss_sum, count = causal_lm_loss_sum(model, batch)
    acc.backward(loss_sum)
    assert loss_sum.dtype == torch.float32 and int(count) == 7 and torch.isfinite(loss_sum)
    assert keep_low_precision_outputs(acc, model) is False  # idempotent
    # The fused projection + loss reads the hidden states through the wrapped model and computes in
    # the dtype autocast gave the projection (bf16), so it gives the same loss.
    fused_sum, fused_count = causal_lm_loss_sum(model, batch, fused=True)
    assert int(fused_count) == 7 and fused_sum.item() == pytest.approx(loss_sum.item(), rel=2e-2)
