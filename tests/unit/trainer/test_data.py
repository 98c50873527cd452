"""Packed windows over real Arrow shards, and the resumable loader's order and state."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.errors import DataError
from schemas.manifest import open_shard, read_manifest
from trainer.data import EMPTY_WINDOW, IGNORE_INDEX, PackedWindows, WindowLoader

SEP = 151643  # <|endoftext|> in the Qwen2 tokenizer


def _docs(rng: np.random.Generator, num_docs: int, *, max_len: int = 40) -> list[list[int]]:
    # Ids below 151,643 so a document never contains the separator.
    return [rng.integers(0, 151_000, size=int(rng.integers(1, max_len))).tolist() for _ in range(num_docs)]


@pytest.fixture
def dataset(tmp_path, write_token_dataset):
    """2,500 short train documents in 2 shards, the first holding 2 Arrow record batches (1,024 rows
    each at most), so the stream crosses batch and shard boundaries; and a small eval split."""
    rng = np.random.default_rng(0)
    train, eval_docs = _docs(rng, 2500, max_len=10), _docs(rng, 5)
    path = write_token_dataset(tmp_path / "shards", train=train, eval=eval_docs, target_bytes=40_000)
    manifest = read_manifest(path)
    shards = manifest.splits["train"].shards
    assert len(shards) >= 2 and open_shard(path.parent / shards[0].path).column("input_ids").num_chunks >= 2
    return manifest, path.parent, train, eval_docs


def _stream(docs):
    return np.asarray([t for d in docs for t in [*d, SEP]], dtype=np.int64)


def test_windows_cover_stream_exactly_and_positions_restart_after_each_separator(dataset):
    manifest, folder, train, _ = dataset
    windows = PackedWindows(manifest, folder, "train", max_length=64)
    stream = _stream(train)
    assert windows.num_tokens == len(stream)
    assert windows.num_windows == len(stream) // 64
    np.testing.assert_array_equal(windows.token_stream(), stream)
    got = np.concatenate([windows[i]["input_ids"] for i in range(len(windows))])
    np.testing.assert_array_equal(got, stream[: len(windows) * 64])  # the stream prefix, in order

    # Expected position ids: count up inside a document, 0 after every separator and at window starts.
    expected_pos = np.zeros(len(stream), dtype=np.int64)
    for k in range(1, len(stream)):
        expected_pos[k] = 0 if stream[k - 1] == SEP else expected_pos[k - 1] + 1
    for i in range(len(windows)):
        w = windows[i]
        # A window restarts its first (possibly continued) segment at 0.
        first_reset = np.flatnonzero(expected_pos[i * 64 + 1 : (i + 1) * 64] == 0)
        head = first_reset[0] + 1 if len(first_reset) else 64
        want = expected_pos[i * 64 : (i + 1) * 64].copy()
        want[:head] = np.arange(head)
        np.testing.assert_array_equal(w["position_ids"], want)
        # Labels: the ids, except -100 at every segment start (a document's first token).
        np.testing.assert_array_equal(w["labels"], np.where(want == 0, IGNORE_INDEX, w["input_ids"]))
        assert w["input_ids"].dtype == np.int64 and w["input_ids"].shape == (64,)


def test_train_drops_partial_window_eval_pads_it(dataset, caplog):
    manifest, folder, train, eval_docs = dataset
    caplog.set_level("INFO", logger="trainer.data")
    train_windows = PackedWindows(manifest, folder, "train", max_length=64)
    dropped = len(_stream(train)) - train_windows.num_windows * 64
    assert f"the last {dropped} tokens" in caplog.text

    eval_stream = _stream(eval_docs)
    length = next(k for k in range(12, 20) if len(eval_stream) % k)  # leaves a partial last window
    ev = PackedWindows(manifest, folder, "eval", max_length=length)
    assert ev.num_windows == -(-len(eval_stream) // length)
    last = ev[ev.num_windows - 1]
    n_real = len(eval_stream) - (ev.num_windows - 1) * length
    assert n_real < length  # the fixture leaves a partial last window
    np.testing.assert_array_equal(last["input_ids"][:n_real], eval_stream[-n_real:])
    assert (last["labels"][n_real:] == IGNORE_INDEX).all()
    assert (last["input_ids"][n_real:] == SEP).all()
    assert last["position_ids"][n_real] == 0  # padding is a segment of its own
    scored = sum(int((ev[i]["labels"] != IGNORE_INDEX).sum()) for i in range(ev.num_windows))
    # Every real token is scored except each segment's first token.
    starts = sum(int((ev[i]["position_ids"][: min(length, len(eval_stream) - i * length)] == 0).sum()) for i in range(ev.num_windows))
    assert scored == len(eval_stream) - starts


def test_too_few_tokens_for_one_window_is_one_line_error(dataset):
    manifest, folder, train, _ = dataset
    total = len(_stream(train))
    with pytest.raises(DataError) as info:
        PackedWindows(manifest, folder, "train", max_length=total + 1)
    message = str(info.value)
    assert "\n" not in message and "max_length" in message and str(total) in message


def test_uint16_shards_read_the_same(tmp_path, write_token_dataset):
    """A vocabulary of <= 65,536 ids gives uint16 shards; the stream must be identical."""
    from pipeline.shards import ShardWriter
    from schemas.manifest import SplitInfo, write_manifest

    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    path = write_token_dataset(tmp_path / "s", train=docs)
    manifest = read_manifest(path)
    writer = ShardWriter(path.parent, "train", token_dtype="uint16", target_bytes=2**20)
    for line, doc in enumerate(docs, 1):
        writer.write([*doc, 60000], source_index=0, line=line)
    shards = writer.close()
    manifest.token_dtype = "uint16"
    manifest.tokenizer.separator_id = 60000
    manifest.splits["train"] = SplitInfo(num_documents=3, num_tokens=12, shards=shards)
    write_manifest(manifest, path.parent)
    windows = PackedWindows(read_manifest(path), path.parent, "train", max_length=6)
    assert windows.token_stream().tolist() == [1, 2, 3, 60000, 4, 5, 60000, 6, 7, 8, 9, 60000]
    assert windows[1]["input_ids"].tolist() == [60000, 6, 7, 8, 9, 60000]
    assert windows[1]["position_ids"].tolist() == [0, 0, 1, 2, 3, 4]  # the tail of a document, then a new one


def test_out_of_vocabulary_id_is_refused(tmp_path, write_token_dataset):
    path = write_token_dataset(tmp_path / "s", train=[[1, 2, 3, 200_000, 5]])
    windows = PackedWindows(read_manifest(path), path.parent, "train", max_length=4)
    with pytest.raises(DataError, match="200000"):
        windows[0]


# ---- WindowLoader (eval) -----------------------------------------------------------------------


@pytest.fixture
def windows(dataset):
    manifest, folder, _, _ = dataset
    return PackedWindows(manifest, folder, "train", max_length=8)


def _ids(batches) -> list[list[int]]:
    return [row.tolist() for b in batches for row in b["input_ids"]]


def test_eval_loader_covers_every_window_once_across_ranks(windows):
    world = 4
    loaders = [WindowLoader(windows, batch_size=3, rank=r, world_size=world) for r in range(world)]
    parts = [[int(i) for i in loader.rank_indices()] for loader in loaders]
    real = sorted(i for p in parts for i in p if i != EMPTY_WINDOW)
    assert real == list(range(windows.num_windows))
    assert len({len(loader) for loader in loaders}) == 1  # same number of eval batches on every rank
    assert _ids(loaders[0]) == _ids(loaders[0])  # every evaluation reads the whole split again
    assert _ids(loaders[1])[:2] == [windows[1]["input_ids"].tolist(), windows[5]["input_ids"].tolist()]
    if windows.num_windows % world:
        padded = [b for loader in loaders for b in loader if (b["labels"] == IGNORE_INDEX).all(dim=1).any()]
        assert padded  # the ranks that ran out hold empty, unscored windows
