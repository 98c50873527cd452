"""The data-set-level part of schemas.verify: altered and missing files named, each file listed once,
and `verify_or_raise` giving the first failed rule as one line. Real shards and manifests."""

from __future__ import annotations

import json

import pytest

from schemas.errors import ManifestError
from schemas.manifest import read_manifest
from schemas.verify.dataset import verify_dataset, verify_or_raise
from schemas.verify.results import FAIL


def test_altered_and_missing_shards_are_named(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2, 3]])
    manifest = read_manifest(path)
    shard = path.parent / manifest.splits["train"].shards[0].path
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        verify_or_raise(manifest, path.parent)
    verify_or_raise(manifest, path.parent, checksums=False)  # same size: only the hash can tell
    shard.unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_or_raise(manifest, path.parent)


def test_a_file_listed_twice_fails_once_listed_and_is_read_once(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "ds", train=[[1, 2, 3], [4, 5]])
    raw = json.loads(path.read_text())
    raw["splits"]["train"]["shards"].append(dict(raw["splits"]["train"]["shards"][0]))
    path.write_text(json.dumps(raw))
    found = verify_dataset(read_manifest(path), path.parent)
    failed = [r for r in found.results if r.status == FAIL]
    assert failed[0].rule == "shard_listed_once" and "is listed again" in failed[0].message
    assert found.splits["train"].num_documents == 2  # the second entry is not read again
    with pytest.raises(ManifestError, match=r"fails the structural check shard_listed_once: .* is listed again.*more failure") as info:
        verify_or_raise(read_manifest(path), path.parent, source=str(path))
    assert "\n" not in str(info.value)
