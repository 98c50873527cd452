"""`cpt-train` on several manifests, end to end on CPU with the tiny Qwen2 model: token shares,
per-source and combined eval, lineage in every record, refusals of incompatible manifests, a new
stage from a saved model, and the step guard (a planted NaN and a planted spike never reach the
weights; a run that keeps diverging stops with one line and its last checkpoint intact)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from schemas.manifest import sha256_file
from tests.integration.test_train_cli import _args, fresh_accelerate_state, sentence_corpus  # noqa: F401 (an autouse fixture)
from trainer.cli import main
from trainer.logs import read_metrics


def chinese_corpus(tokenizer, num_docs: int, *, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    words = ["酒店", "服务", "房间", "早餐", "很好", "一般", "干净", "位置", "方便", "推荐"]
    return [tokenizer.encode("，".join(rng.choice(words) for _ in range(rng.randint(6, 20))) + "。") for _ in range(num_docs)]


@pytest.fixture
def mixture(tmp_path, write_token_dataset, qwen_tokenizer):
    """domain (English sentences, with eval), general (Chinese, with eval), code (no eval split)."""
    return {
        "domain": write_token_dataset(tmp_path / "domain", train=sentence_corpus(qwen_tokenizer, 40, seed=1),
                                      eval=sentence_corpus(qwen_tokenizer, 4, seed=2)),
        "general": write_token_dataset(tmp_path / "general", train=chinese_corpus(qwen_tokenizer, 30, seed=3),
                                       eval=chinese_corpus(qwen_tokenizer, 4, seed=4)),
        "code": write_token_dataset(tmp_path / "code", train=sentence_corpus(qwen_tokenizer, 12, seed=5)),
    }


def _mixture_args(manifests, model_dir, out, weights, **overrides):
    argv = _args(manifests[0], model_dir, out, **overrides)
    for path in manifests[1:]:
        argv += ["--manifest", str(path)]
    return argv + ["--mixture_weights", ",".join(str(w) for w in weights)]


def test_mixture_shares_per_source_eval_and_lineage(tmp_path, mixture, tiny_model_dir, capsys):
    out = tmp_path / "run"
    manifests = [mixture["domain"], mixture["general"], mixture["code"]]
    weights = [0.6, 0.3, 0.1]
    code = main(_mixture_args(manifests, tiny_model_dir, out, weights, max_steps=8, logging_steps=2, eval_steps=4, save_steps=4,
                              max_eval_batches=1, per_device_eval_batch_size=2, report_to="none", max_repetitions=20))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "code have no eval split" in captured.err

    records = read_metrics(out / "logs" / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    last = train[-1]
    windows = 8 * 2 * 2  # steps x batch x accumulation
    for name, w in zip(["domain", "general", "code"], weights):
        assert all(f"tokens/{name}" in r for r in train)
        # The deterministic schedule: within 2 windows of the share, whatever the span.
        assert abs(last[f"tokens/{name}"] / 32 - w * windows) <= 2, (name, last)
    assert sum(last[f"tokens/{n}"] for n in ("domain", "general", "code")) == last["num_tokens"] == windows * 32
    assert last["skipped_steps"] == 0

    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 4, 8]
    for r in evals:
        assert "eval_loss/code" not in r
        combined = (0.6 * r["eval_loss/domain"] + 0.3 * r["eval_loss/general"]) / 0.9
        assert r["eval_loss"] == pytest.approx(combined, rel=1e-12)
        assert r["eval_loss/domain"] != r["eval_loss/general"]
        assert r["eval_tokens"] <= 2 * 2 * 32  # max_eval_batches applies per source: one batch of 2 windows each

    # best_model/ follows the first source's eval loss by default.
    best = json.loads((out / "best_model" / "cpt_checkpoint.json").read_text())
    assert best["best_model_metric"] == "eval_loss/domain"
    assert best["eval"]["eval_loss/domain"] == min(r["eval_loss/domain"] for r in evals if r["step"] > 0)

    # Lineage: every record names every manifest, its weight and what was drawn from it.
    for folder in ("final_model", "checkpoint-step-8", "best_model"):
        record = json.loads((out / folder / "cpt_checkpoint.json").read_text())
        assert [m["name"] for m in record["mixture"]] == ["domain", "general", "code"]
        assert [m["weight"] for m in record["mixture"]] == weights
        for entry, path in zip(record["mixture"], manifests):
            assert entry["path"] == str(path.resolve()) and entry["sha256"] == sha256_file(path)
        step_record = next(r for r in train if r["step"] == record["global_step"])
        assert [m["tokens_drawn"] for m in record["mixture"]] == [step_record[f"tokens/{n}"] for n in ("domain", "general", "code")]
        assert record["manifest"] == {"path": str(manifests[0].resolve()), "sha256": sha256_file(manifests[0])}
    assert "by source: domain" in captured.out and "skipped steps: 0" in captured.out
    assert "eval loss by source: domain" in captured.out

    # eval_loss/general is the real loss of final_model on general's eval split (the batch it scored).
    from transformers import AutoModelForCausalLM

    from trainer.data import PackedWindows, WindowLoader
    from trainer.modeling import causal_lm_loss_sum
    from trainer.verify import load_verified_manifest

    model = AutoModelForCausalLM.from_pretrained(out / "final_model")
    manifest, folder = load_verified_manifest(mixture["general"], checksums=False)
    batch = next(iter(WindowLoader(PackedWindows(manifest, folder, "eval", max_length=32), batch_size=2)))
    with torch.no_grad():
        loss_sum, count = causal_lm_loss_sum(model, batch)
    assert float(loss_sum) / int(count) == pytest.approx(evals[-1]["eval_loss/general"], rel=1e-5)


def test_incompatible_manifests_are_one_line_errors(tmp_path, mixture, tiny_model_dir, qwen_tokenizer, tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    from pipeline.shards import write_token_dataset
    from pipeline.tokenize.load import tokenizer_info

    docs = {"train": sentence_corpus(qwen_tokenizer, 8, seed=9)}
    other_sep = write_token_dataset(tmp_path / "chat", docs, tokenizer=tokenizer_info(qwen_tokenizer, name_or_path="qwen", separator_token="<|im_end|>"))
    extended = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    extended.add_tokens(["<my_domain_token>"])
    other_tok = write_token_dataset(tmp_path / "extended", docs, tokenizer=tokenizer_info(extended, name_or_path="extended"))
    same_folder_name = write_token_dataset(tmp_path / "x" / "domain", docs, tokenizer=tokenizer_info(qwen_tokenizer, name_or_path="qwen"))
    cases = [
        ([mixture["domain"], other_sep], [0.5, 0.5], "different separators"),
        ([mixture["domain"], other_tok], [0.5, 0.5], "different tokenizers"),
        ([mixture["domain"], same_folder_name], [0.5, 0.5], "--mixture_names"),
        ([mixture["domain"], mixture["domain"]], [0.5, 0.5], "listed twice"),
        ([mixture["domain"], mixture["general"]], [0.5, 0.4], "sum to 1"),
    ]
    for manifests, weights, expected in cases:
        args = _mixture_args(manifests, tiny_model_dir, tmp_path / "run", weights, max_steps=1, report_to="none")
        if expected == "listed twice":
            args += ["--mixture_names", "a,b"]
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], (expected, err[-1500:])
        if expected.startswith("different"):
            assert str(manifests[0].resolve()) in errors[0] and str(manifests[1].resolve()) in errors[0]
    assert main(_args(mixture["domain"], tiny_model_dir, tmp_path / "run") + ["--manifest", str(mixture["general"])]) == 2
    assert "mixture_weights is required with 2 manifests" in capsys.readouterr().err
    pair = [mixture["domain"], mixture["code"]]
    assert main(_mixture_args(pair, tiny_model_dir, tmp_path / "run", [0.5, 0.5], best_model_metric="eval_loss/code")) == 2
    assert "best_model_metric='eval_loss/code' names no source with an eval split; use eval_loss or one of eval_loss/domain" in capsys.readouterr().err
    # code holds 10 windows; 100 steps x 2 windows at 0.5 read them 10 times (domain: 35 windows, 2.9 passes).
    assert main(_mixture_args(pair, tiny_model_dir, tmp_path / "run", [0.5, 0.5], max_steps=100, gradient_accumulation_steps=1, max_repetitions=4)) == 2
    err = capsys.readouterr().err
    assert "error: source 'code' holds" in err and "more than its limit of 4 passes" in err and "Qwen2ForCausalLM" not in err
    assert not (tmp_path / "run" / "final_model").exists()


def test_a_new_stage_starts_from_saved_weights_with_a_fresh_optimizer_and_schedule(tmp_path, mixture, tiny_model_dir, capsys):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(_mixture_args([mixture["domain"], mixture["general"]], tiny_model_dir, stage1, [0.75, 0.25], max_steps=4,
                              lr_scheduler_type="warmup_stable_decay", decay_ratio=0.5, warmup_steps=1, eval_steps=0,
                              save_steps=0, logging_steps=1, max_eval_batches=1, report_to="none")) == 0
    stage1_final = read_metrics(stage1 / "logs" / "metrics.jsonl")[-1]
    lrs = [r["lr"] for r in read_metrics(stage1 / "logs" / "metrics.jsonl") if "lr" in r]
    assert lrs[0] == lrs[1] == pytest.approx(5e-3) and lrs[2] < lrs[1]  # warmup 1, stable, then the 1-sqrt decay

    # Stage 2: an anneal on another mixture, from stage 1's final_model: step 0 is stage 1's model.
    assert main(_mixture_args([mixture["general"], mixture["domain"]], stage1 / "final_model", stage2, [0.5, 0.5], max_steps=2,
                              lr_scheduler_type="linear", warmup_steps=0, learning_rate=1e-3, eval_steps=0, logging_steps=1,
                              max_eval_batches=1, report_to="none")) == 0
    assert "new stage: weights of" in capsys.readouterr().err
    records = read_metrics(stage2 / "logs" / "metrics.jsonl")
    assert records[0]["eval_loss/domain"] == pytest.approx(stage1_final["eval_loss/domain"], rel=1e-6)
    assert records[1]["lr"] == pytest.approx(1e-3 * 1 / 2)  # a fresh linear schedule: no warmup, decaying over 2 steps
    record = json.loads((stage2 / "final_model" / "cpt_checkpoint.json").read_text())
    assert record["global_step"] == 2
    parent = record["init_from"]
    assert parent["path"] == str((stage1 / "final_model").resolve()) and parent["global_step"] == 4
    assert [m["name"] for m in parent["mixture"]] == ["domain", "general"] and parent["init_from"] is None
    assert [m["name"] for m in record["mixture"]] == ["general", "domain"]


def test_planted_nan_and_spike_are_skipped_without_touching_the_weights(tmp_path, mixture, tiny_model_dir, caplog):
    from schemas.config import CptConfig
    from trainer.loop import build_run, train_step

    config = CptConfig().with_overrides({
        "model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "run"), "max_length": 32, "batch_size": 2,
        "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "report_to": "none", "max_steps": 20,
        "learning_rate": 1e-3, "warmup_steps": 0, "spike_warmup_steps": 4, "manifests": [str(mixture["domain"]), str(mixture["general"])],
        "mixture_weights": [0.5, 0.5],
        "fused_linear_cross_entropy": False,  # the planted values go through the LM head's forward (the fused loss skips it)
    })
    run = build_run(config)
    model = run.accelerator.unwrap_model(run.model)
    planted = {"scale": None}

    def plant(module, inputs, output):  # a real forward hook on the LM head: the logits of one step
        return output * planted["scale"] if planted["scale"] is not None else output

    model.lm_head.register_forward_hook(plant)

    def snapshot():
        moments = [run.optimizer.optimizer.state[p]["exp_avg"].clone() for p in model.parameters() if p in run.optimizer.optimizer.state]
        return {k: v.clone() for k, v in model.state_dict().items()}, moments

    def unchanged(before) -> bool:
        weights, moments = before
        now_weights, now_moments = snapshot()
        return all(torch.equal(weights[k], now_weights[k]) for k in weights) and all(torch.equal(a, b) for a, b in zip(moments, now_moments))

    for _ in range(5):
        assert train_step(run, run.loader.next_step().micro_batches).skipped is None

    for scale, expected in ((float("nan"), "non-finite loss"), (60.0, "loss spike")):
        before, lr_step = snapshot(), run.scheduler.last_epoch
        planted["scale"] = scale
        result = train_step(run, run.loader.next_step().micro_batches)
        planted["scale"] = None
        assert result.skipped is not None and result.skipped.startswith(expected), result
        assert unchanged(before), f"a skipped step ({expected}) changed the weights or AdamW state"
        assert run.scheduler.last_epoch == lr_step + 1  # the schedule moves on with the step count
        before = snapshot()
        assert train_step(run, run.loader.next_step().micro_batches).skipped is None
        assert not unchanged(before)  # the next normal step is applied
    assert (run.guard.skipped_nonfinite, run.guard.skipped_spike, run.guard.consecutive) == (1, 1, 0)
    assert math.isnan(run.guard.state_dict()["losses"][0]) is False  # the NaN never entered the statistics


def test_a_diverging_run_stops_after_n_skips_in_a_row_with_its_last_checkpoint_intact(tmp_path, mixture, tiny_model_dir, capsys):
    """lr 1e30 (no planting): step 1 blows the weights up, every later loss is NaN."""
    from safetensors.torch import load_file

    from trainer import checkpoint as ckpt

    out = tmp_path / "run"
    code = main(_mixture_args([mixture["domain"], mixture["general"]], tiny_model_dir, out, [0.5, 0.5], max_steps=10,
                              learning_rate=1e30, warmup_steps=0, max_grad_norm=0, save_steps=1, save_total_limit=0,
                              eval_steps=0, logging_steps=1, max_consecutive_skips=3, report_to="none", batch_size=1,
                              gradient_accumulation_steps=1))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, err[-2000:]
    assert "3 optimizer steps in a row were skipped (steps 2-4" in errors[0] and "checkpoint-step-3" in errors[0]
    assert not (out / "final_model").exists()
    skipped = read_metrics(out / "logs" / "skipped_steps.jsonl")
    assert [r["step"] for r in skipped] == [2, 3, 4] and all(r["reason"].startswith("non-finite") for r in skipped)
    assert all(sum(len(v) for v in r["windows"].values()) == 1 and set(r["windows"]) <= {"domain", "general"} for r in skipped)
    # Skipped steps never reached the weights: the checkpoints of steps 1-3 hold the same weights.
    assert [step for step, _ in ckpt.list_checkpoints(out)] == [1, 2, 3]
    first, last = (load_file(str(out / f"checkpoint-step-{s}" / "model.safetensors")) for s in (1, 3))
    assert all(torch.equal(first[k], last[k]) for k in first)
    assert json.loads((out / "checkpoint-step-3" / "trainer_state.json").read_text())["guard"]["skipped_nonfinite"] == 2
