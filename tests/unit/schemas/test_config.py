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

