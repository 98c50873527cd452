"""The contract: manifest round trip, version refusal, path safety, accounting, shard files."""

import json
import re

import pytest

from schemas.errors import ConfigError, ManifestError
from schemas.config import CptConfig, load_config
from schemas.manifest import Accounting, open_shard, read_manifest, verify_files


def test_manifest_round_trip_and_shards_verify(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2, 3], [4, 5]], eval=[[6]])
    manifest = read_manifest(path)
    assert manifest.to_dict() == json.loads(path.read_text())
    assert manifest.splits["train"].num_tokens == 3 + 1 + 2 + 1
    verify_files(manifest, path.parent)
    table = open_shard(path.parent / manifest.splits["train"].shards[0].path)
    assert table.column("input_ids").to_pylist() == [[1, 2, 3, 151643], [4, 5, 151643]]
    assert table.column("line").to_pylist() == [1, 2]


def test_unknown_schema_version_is_refused(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2]])
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="schema_version 99"):
        read_manifest(path)


def test_shard_path_outside_folder_is_refused(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2]])
    raw = json.loads(path.read_text())
    raw["splits"]["train"]["shards"][0]["path"] = "../elsewhere.arrow"
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="outside its folder"):
        read_manifest(path)


def test_altered_and_missing_shards_are_named(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2, 3]])
    manifest = read_manifest(path)
    shard = path.parent / manifest.splits["train"].shards[0].path
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        verify_files(manifest, path.parent)
    verify_files(manifest, path.parent, checksums=False)  # same size: only the hash can tell
    shard.unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_files(manifest, path.parent)


def test_accounting_invariant():
    assert Accounting(num_records=5, kept={"train": 3}, dropped={"too_short": 2}).problems() == []
    assert Accounting(num_records=6, kept={"train": 3}, dropped={"too_short": 2}).problems()
    assert Accounting(num_records=5, kept={"train": 3}, dropped={"bogus": 2}).problems()


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


def test_packages_do_not_import_each_other():
    """pipeline/ and trainer/ talk only through schemas/ (DESIGN.md)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for package, forbidden in (("pipeline", "trainer"), ("trainer", "pipeline"), ("schemas", "pipeline"), ("schemas", "trainer")):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] != forbidden, f"{path.relative_to(root)} imports {name}"


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


def test_missing_manifest_error_names_the_folder_to_build(tmp_path):
    for given in (tmp_path / "shards", tmp_path / "shards" / "manifest.json"):
        with pytest.raises(ManifestError, match=re.escape(f"--output {tmp_path / 'shards'}`")):
            read_manifest(given)


def test_token_dataset_refuses_ids_outside_the_vocabulary(tmp_path, qwen_tokenizer):
    from pipeline.shards import write_token_dataset
    from pipeline.tokenize import tokenizer_info
    from schemas.errors import DataError

    info = tokenizer_info(qwen_tokenizer, name_or_path="qwen2")
    with pytest.raises(DataError, match="token id 151669 outside"):
        write_token_dataset(tmp_path / "ds", {"train": [[1, 2], [151669]]}, tokenizer=info)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    write_token_dataset(tmp_path / "ok", {"train": [[1, 2]]}, tokenizer=info)
    assert read_manifest(tmp_path / "ok").splits["train"].num_tokens == 3
