"""Unit tests of the config tree (schemas.config): unknown keys, overrides, and the one flag parser
both programs use."""

import json

import pytest

from schemas.config import CptConfig, load_config
from schemas.errors import ConfigError


def test_config_unknown_keys_and_overrides(tmp_path):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"training": {"learning_rate": 1e-4}, "data": {"min_length": 20}}))
    config = load_config(cfg_path).with_overrides({"batch_size": "8", "max_length": "128"})
    assert config.training.per_device_train_batch_size == 8
    assert config.model.max_length == 128
    assert config.data.min_length == 20
    assert "training.per_device_train_batch_size" in config.explicit
    assert "training.weight_decay" not in config.explicit
    with pytest.raises(ConfigError, match="unknown config key training.lr"):
        CptConfig.from_dict({"training": {"lr": 1}})
    with pytest.raises(ConfigError, match="learning_rate"):
        config.with_overrides({"learning_rate": "-1"})


def test_flag_overrides_are_parsed_one_way_for_both_programs():
    from schemas.config import parse_flag_overrides

    overrides, passed = parse_flag_overrides(
        ["--learning_rate", "1e-4", "--data.min_length=20", "--filter_duplicates", "--train_data", "c.txt"],
        passthrough=("train_data",),
    )
    assert overrides == {"training.learning_rate": "1e-4", "data.min_length": "20", "data.filter_duplicates": "true"}
    assert passed == {"train_data": "c.txt"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_flag_overrides(["--learning_rate"])  # a bare flag means true only for booleans
    with pytest.raises(ConfigError, match="unknown config key"):
        parse_flag_overrides(["--learnin_rate", "1"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_flag_overrides(["stray"])



def test_mixture_keys_take_lists_from_json_or_comma_separated_flags_and_are_validated():
    config = CptConfig.from_dict({"training": {"manifests": ["a/manifest.json", "b/manifest.json"], "mixture_weights": [0.8, 0.2]}})
    assert config.training.mixture_weights == [0.8, 0.2]
    flags = CptConfig().with_overrides({"manifests": "a/manifest.json,b/manifest.json", "mixture_weights": "0.95,0.05",
                                        "mixture_names": "domain,general"})
    assert flags.training.manifests == ["a/manifest.json", "b/manifest.json"] and flags.training.mixture_weights == [0.95, 0.05]
    assert flags.training.mixture_names == ["domain", "general"]
    assert CptConfig().with_overrides({"manifests": "one/manifest.json"}).training.mixture_weights == []  # one manifest needs none
    two = {"manifests": "a/m.json,b/m.json"}
    bad = [
        ({**two}, "mixture_weights is required with 2 manifests"),
        ({**two, "mixture_weights": "0.8,0.1"}, "sum to 1"),
        ({**two, "mixture_weights": "0,1"}, "a first weight > 0"),
        ({**two, "mixture_weights": "1"}, "one weight per manifest"),
        ({**two, "mixture_weights": "0.5,0.5", "mixture_names": "x,x"}, "unique names"),
        ({**two, "mixture_weights": "0.5,0.5", "mixture_names": "a b,c"}, "metric keys"),
        ({"mixture_weights": "0.9999995,0.0000005"}, "0.000001"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "warmup_stable_decay"),
        ({"decay_type": "exp"}, "1-sqrt"),
        ({"spike_warmup_steps": 200}, "spike_window=128"),
        ({"best_model_metric": "loss"}, "eval_loss/<source name>"),
        ({"mixture_weights": "a,b"}, "expected float"),
    ]
    for overrides, expected in bad:
        with pytest.raises(ConfigError) as info:
            CptConfig().with_overrides(overrides)
        assert expected in str(info.value) and "\n" not in str(info.value), (overrides, str(info.value))


def test_a_file_key_restating_its_default_is_not_explicit(tmp_path):
    # The original tool's config spells out `"max_train_samples": null`: that restates the default
    # and must not conflict with shards built with --max_train_samples 800.
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"max_train_samples": None, "min_length": 10, "text_field": "content"},
                                "training": {"seed": 42, "learning_rate": 1e-4}}))
    config = load_config(path)
    assert "data.max_train_samples" not in config.explicit and "data.min_length" not in config.explicit
    assert "training.seed" not in config.explicit
    assert {"data.text_field", "training.learning_rate"} <= config.explicit
    # A flag is a request for this run: it stays explicit even when it restates the default.
    assert "data.min_length" in config.with_overrides({"min_length": "10"}).explicit


def test_unknown_keys_name_the_nearest_known_key():
    cases = [
        (lambda: CptConfig.from_dict({"training": {"learning_rat": 1e-4}}), "did you mean training.learning_rate?"),
        (lambda: CptConfig.from_dict({"trainig": {}}), "did you mean training?"),
        (lambda: CptConfig().with_overrides({"max_lenght": "128"}), "did you mean --max_length?"),
        (lambda: CptConfig().with_overrides({"model.max_lenght": "128"}), "did you mean model.max_length?"),
        (lambda: CptConfig().with_overrides({"batch_sise": "2"}), "did you mean --batch_size?"),
    ]
    for make, expected in cases:
        with pytest.raises(ConfigError) as info:
            make()
        assert expected in str(info.value), str(info.value)
    with pytest.raises(ConfigError) as info:
        CptConfig().with_overrides({"zzzz": "1"})
    assert "did you mean" not in str(info.value)


def test_written_config_leaves_out_run_control_keys(tmp_path):
    from schemas.config import write_config

    config = CptConfig().with_overrides({"resume_from_checkpoint": "latest", "overwrite_output_dir": "true", "learning_rate": "1e-4"})
    write_config(config, tmp_path / "cpt_config.json")
    written = json.loads((tmp_path / "cpt_config.json").read_text())
    assert "resume_from_checkpoint" not in written["training"] and "overwrite_output_dir" not in written["training"]
    assert written["training"]["learning_rate"] == 1e-4
    reused = load_config(tmp_path / "cpt_config.json")
    assert reused.training.resume_from_checkpoint is None and reused.training.overwrite_output_dir is False
