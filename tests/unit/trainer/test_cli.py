"""Unit tests of the `cpt-train` command line (trainer.cli): the original tool's flags, section keys,
overrides, one-line errors with exit code 2, and the answer to --train_data."""

from __future__ import annotations

import json

import pytest

from schemas.errors import ConfigError
from trainer.cli import main, parse_overrides, raw_text_message, resolve_config


def _config(*tokens: str, config_path=None):
    overrides, raw = parse_overrides(list(tokens))
    assert raw == {}
    return resolve_config(config_path, overrides)



def test_original_flags_set_their_keys():
    cfg = _config(
        "--model_name_or_path", "some/model",
        "--output_dir", "out",
        "--learning_rate", "1e-4",
        "--batch_size", "3",
        "--num_train_epochs", "2",
        "--max_length", "128",
        "--resume_from_checkpoint", "latest",
    )
    assert cfg.model.model_name_or_path == "some/model"
    assert cfg.training.output_dir == "out"
    assert cfg.training.learning_rate == 1e-4
    assert cfg.training.per_device_train_batch_size == 3
    assert cfg.training.num_train_epochs == 2
    assert cfg.model.max_length == 128
    assert cfg.training.resume_from_checkpoint == "latest"
    assert "training.per_device_train_batch_size" in cfg.explicit


def test_section_keys_equals_form_and_bare_booleans():
    cfg = _config("--training.warmup_ratio=0.1", "--model.use_flash_attention", "false", "--overwrite_output_dir", "--save_steps", "7")
    assert cfg.training.warmup_ratio == 0.1
    assert cfg.model.use_flash_attention is False
    assert cfg.training.overwrite_output_dir is True
    assert cfg.training.save_steps == 7


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "cpt_config.json"
    path.write_text(json.dumps({"training": {"learning_rate": 1e-3, "logging_steps": 3}, "model": {"max_length": 64}}))
    cfg = _config("--learning_rate", "2e-3", config_path=path)
    assert cfg.training.learning_rate == 2e-3  # flag wins
    assert cfg.training.logging_steps == 3  # file kept
    assert cfg.model.max_length == 64
    assert cfg.training.num_train_epochs == 3  # original default


def test_non_boolean_flag_without_value_is_an_error():
    with pytest.raises(ConfigError, match="--learning_rate needs a value"):
        parse_overrides(["--learning_rate"])


def test_unknown_key_exits_2_with_one_line(capsys):
    assert main(["--manifest", "x.json", "--learning_rat", "1e-4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown config key 'learning_rat' (did you mean --learning_rate?); see README 'Configuration' for the keys of training, model and data"]


def test_bad_value_exits_2(capsys):
    assert main(["--manifest", "x.json", "--warmup_ratio", "1.5"]) == 2
    assert "training.warmup_ratio=1.5 is invalid" in capsys.readouterr().err


def test_train_data_gets_the_cpt_prep_command(capsys):
    code = main(["--train_data", "corpus.txt", "--eval_data", "eval.txt", "--model_name_or_path", "Qwen/Qwen2.5-0.5B"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "cpt-prep build corpus.txt --eval eval.txt --tokenizer Qwen/Qwen2.5-0.5B --output shards" in lines[0]
    assert "cpt-train --manifest shards/manifest.json" in lines[0]


def test_train_data_without_eval_suggests_a_held_out_fraction():
    message = raw_text_message({"train_data": "my corpus.txt"}, "Qwen/Qwen2.5-7B")
    assert "cpt-prep build 'my corpus.txt' --eval_fraction 0.05 --tokenizer Qwen/Qwen2.5-7B --output shards" in message


def test_missing_manifest_exits_2(capsys):
    assert main(["--learning_rate", "1e-4"]) == 2
    assert "--manifest is required" in capsys.readouterr().err



def test_interrupt_hint_offers_resume_only_when_a_checkpoint_exists(tmp_path):
    from trainer import checkpoint as ckpt
    from trainer.cli import interrupted_hint

    out = tmp_path / "run"
    config = _config("--output_dir", str(out))
    assert "no checkpoint was written" in interrupted_hint(config) and "--resume_from_checkpoint" not in interrupted_hint(config)
    out.mkdir()
    (out / "checkpoint-step-4.tmp-999").mkdir()  # a write that was cut off: nothing to resume from
    assert "--resume_from_checkpoint" not in interrupted_hint(config)
    folder = out / "checkpoint-step-4"
    folder.mkdir()
    (folder / ckpt.RECORD_NAME).write_text(json.dumps({"format": 1, "complete": True, "resumable": True, "global_step": 4}))
    hint = interrupted_hint(config)
    assert "--resume_from_checkpoint latest" in hint and "step 4" in hint, hint
    assert interrupted_hint(None) == ""  # interrupted before the config was read
