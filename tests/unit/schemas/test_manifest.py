"""Unit tests of the data contract (schemas.manifest): round trip, schema version, path safety,
altered and missing shards, the accounting invariant."""

import json
import re

import pytest

from schemas.errors import ManifestError
from schemas.manifest import Accounting, open_shard, read_manifest
from schemas.verify.dataset import verify_or_raise


def test_manifest_round_trip_and_shards_verify(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2, 3], [4, 5]], eval=[[6]])
    manifest = read_manifest(path)
    assert manifest.to_dict() == json.loads(path.read_text())
    assert manifest.splits["train"].num_tokens == 3 + 1 + 2 + 1
    verify_or_raise(manifest, path.parent)
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


def test_accounting_invariant():
    assert Accounting(num_records=5, kept={"train": 3}, dropped={"too_short": 2}).problems() == []
    assert Accounting(num_records=6, kept={"train": 3}, dropped={"too_short": 2}).problems()
    assert Accounting(num_records=5, kept={"train": 3}, dropped={"bogus": 2}).problems()


def test_missing_manifest_error_names_the_folder_to_build(tmp_path):
    for given in (tmp_path / "shards", tmp_path / "shards" / "manifest.json"):
        with pytest.raises(ManifestError, match=re.escape(f"--output {tmp_path / 'shards'}`")):
            read_manifest(given)

