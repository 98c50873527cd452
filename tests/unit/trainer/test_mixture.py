"""The training loader (trainer.mixture): the schedule's shares over short spans, the split over
processes and micro-batches, each source's seeded passes, the repetition limit, and the exact,
refusing resume state. Real Arrow shards of different sizes."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from schemas.errors import DataError, TrainingError
from schemas.manifest import read_manifest
from trainer.data import PackedWindows
from trainer.mixture import MixtureLoader, MixtureSchedule, MixtureSource, integer_weights

MAX_LENGTH = 8


@pytest.fixture(scope="module")
def source_windows(tmp_path_factory, write_token_dataset):
    """Three train splits of 240, 37 and 5 windows of 8 tokens (ids differ per source)."""
    rng = np.random.default_rng(0)
    out = []
    for k, num_tokens in enumerate((240 * 8 + 3, 37 * 8, 5 * 8 + 7)):
        docs, total = [], 0
        while total < num_tokens:
            n = int(min(rng.integers(1, 20), num_tokens - total - 1)) or 1
            docs.append((rng.integers(0, 1000, size=n) + 10_000 * k).tolist())
            total += n + 1
        path = write_token_dataset(tmp_path_factory.mktemp(f"src{k}"), train=docs)
        out.append(PackedWindows(read_manifest(path), path.parent, "train", max_length=MAX_LENGTH))
    assert [w.num_windows for w in out] == [240, 37, 5]
    return out


def _sources(windows, weights, names=("domain", "general", "code")):
    return [MixtureSource(name=names[i], windows=windows[i], weight=w, sha256=f"{i:064x}") for i, w in enumerate(weights)]


def _loader(windows, weights, **kwargs):
    settings = {"batch_size": 2, "accumulation": 1, "seed": 0, "max_repetitions": math.inf, **kwargs}
    return MixtureLoader(_sources(windows, weights), **settings)


WEIGHTS = [
    [1.0],
    [0.8, 0.2],
    [0.95, 0.05],
    [0.75, 0.25],
    [0.7, 0.2, 0.1],
    [0.5, 0.49, 0.01],
    [0.6, 0.0, 0.4],
]


@pytest.mark.parametrize("weights", WEIGHTS + [[0.262, 0.005, 0.001, 0.141, 0.418, 0.173], [0.055, 0.001, 0.297, 0.227, 0.414, 0.006]])
def test_schedule_keeps_every_source_within_one_window_of_its_share(weights):
    """Tijdeman's bound 1 - 1/(2n-2) holds after every position (the 6-source vectors are ones where
    Megatron's greedy largest-deficit rule drifts past one window)."""
    schedule = MixtureSchedule(weights)
    q = integer_weights(weights)
    total = sum(q)
    n = sum(1 for x in q if x)
    bound = 1 - Fraction(1, 2 * n - 2) if n > 1 else Fraction(0)
    worst = Fraction(0)
    for t in range(1, 20_001):
        schedule.next()
        worst = max(worst, max(abs(Fraction(q[i] * t, total) - schedule.counts[i]) for i in range(len(q))))
    assert worst <= bound, (weights, float(worst))
    assert all(schedule.counts[i] == 0 for i, x in enumerate(q) if x == 0)


@pytest.mark.parametrize("weights", WEIGHTS[1:])
@pytest.mark.parametrize("batch_size, accumulation, world_size", [(1, 1, 1), (2, 1, 1), (1, 3, 1), (1, 1, 2), (2, 2, 4), (4, 8, 8)])
@pytest.mark.parametrize("seed", [0, 7])
def test_any_100_steps_hold_each_token_share_within_2_points(source_windows, weights, batch_size, accumulation, world_size, seed):
    loader = _loader(source_windows, weights, batch_size=batch_size, accumulation=accumulation, world_size=world_size, seed=seed)
    num_steps = 160 if batch_size * accumulation * world_size < 100 else 110
    counts = np.zeros((num_steps, len(weights)))
    for s in range(num_steps):
        step = loader.next_step()
        for source, _ in step.windows:
            counts[s, source] += 1
    per_span = np.lib.stride_tricks.sliding_window_view(counts, 100, axis=0).sum(axis=-1)  # [spans, sources]
    shares = per_span / per_span.sum(axis=1, keepdims=True)
    worst = np.abs(shares - np.asarray(weights)).max()
    assert worst <= 0.02, (weights, worst)
    # Tokens, as the metrics count them, follow the windows exactly (every window holds max_length tokens).
    assert [loader.tokens_drawn(i) for i in range(len(weights))] == (counts.sum(axis=0) * MAX_LENGTH).astype(int).tolist()


def test_a_step_is_the_same_windows_however_it_is_split(source_windows):
    """2 processes x batch 1 read exactly the windows of 1 process x batch 2, rank by rank."""
    one = _loader(source_windows, [0.8, 0.2], batch_size=2, accumulation=2)
    ranks = [_loader(source_windows, [0.8, 0.2], batch_size=1, accumulation=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        big = one.next_step()
        parts = [r.next_step() for r in ranks]
        assert all(p.windows == big.windows for p in parts)
        # Micro-batch m: rank 0 holds position 2m, rank 1 position 2m + 1.
        for m in range(2):
            rows = big.micro_batches[m]["input_ids"].tolist()
            assert [parts[r].micro_batches[m]["input_ids"][0].tolist() for r in range(2)] == rows
        source, index = big.windows[0]
        assert big.micro_batches[0]["input_ids"][0].tolist() == source_windows[source][index]["input_ids"].tolist()


def test_each_pass_over_a_source_is_a_fresh_seeded_permutation(source_windows, caplog):
    caplog.set_level("INFO", logger="trainer.mixture")
    loader = _loader(source_windows, [0.5, 0.5], batch_size=1)
    draws: list[list[int]] = [[], []]
    for _ in range(200):  # source 1 (37 windows): about 2.7 passes
        (source, index), = loader.next_step().windows
        draws[source].append(index)
    n = source_windows[1].num_windows
    passes = [draws[1][k : k + n] for k in range(0, len(draws[1]) - n + 1, n)]
    assert len(passes) >= 2 and all(sorted(p) == list(range(n)) for p in passes)
    assert passes[0] != passes[1]
    assert "source general: pass 2 over its 37 train windows" in caplog.text
    assert sorted(draws[0]) == sorted(set(draws[0]))  # the large source has not repeated a window yet
    seed0, seed1 = (_loader(source_windows, [0.5, 0.5], batch_size=1, seed=seed) for seed in (0, 1))
    assert [seed0.next_step().windows for _ in range(20)] != [seed1.next_step().windows for _ in range(20)]


def test_an_eval_only_source_is_never_drawn(source_windows):
    loader = _loader(source_windows, [0.9, 0.0, 0.1])
    for _ in range(50):
        assert all(source != 1 for source, _ in loader.next_step().windows)
    assert loader.windows_drawn(1) == 0 and loader.windows_drawn(0) + loader.windows_drawn(2) == 100


def test_repetition_limit_is_checked_before_step_0_and_enforced_while_drawing(source_windows):
    loader = _loader(source_windows, [0.7, 0.3], batch_size=4, max_repetitions=2)
    loader.check_budget(20, fix="raise it")  # 80 windows, ~24 of general's 37: fine
    with pytest.raises(DataError) as info:
        loader.check_budget(100, fix="raise training.max_repetitions")  # ~120 of 37 windows: 3.2 passes
    message = str(info.value)
    assert "\n" not in message and "'general'" in message and "37 train windows" in message and "raise training.max_repetitions" in message
    with pytest.raises(TrainingError, match="source 'general' ran out at step"):
        for _ in range(100):
            loader.next_step()
    assert loader.windows_drawn(1) == 2 * 37  # two whole passes were drawn, not one window more


def test_resume_continues_with_exactly_the_next_windows(source_windows):
    reference = _loader(source_windows, [0.7, 0.2, 0.1], batch_size=2, accumulation=2, seed=3)
    expected = [reference.next_step() for _ in range(30)]

    first = _loader(source_windows, [0.7, 0.2, 0.1], batch_size=2, accumulation=2, seed=3)
    for _ in range(11):
        first.next_step()
    state = json.loads(json.dumps(first.state_dict()))  # a JSON round trip, as in a checkpoint
    assert state["version"] == 2 and state["positions"] == 44 and sum(s["windows_drawn"] for s in state["sources"]) == 44

    resumed = _loader(source_windows, [0.7, 0.2, 0.1], batch_size=2, accumulation=2, seed=3)
    resumed.load_state_dict(state)
    for want in expected[11:]:
        got = resumed.next_step()
        assert got.windows == want.windows and got.step == want.step
        for a, b in zip(got.micro_batches, want.micro_batches):
            assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert [resumed.windows_drawn(i) for i in range(3)] == [reference.windows_drawn(i) for i in range(3)]


def test_a_state_of_another_mixture_or_shape_is_refused(source_windows):
    loader = _loader(source_windows, [0.8, 0.2], batch_size=2, accumulation=2)
    loader.next_step()
    state = loader.state_dict()
    cases = {
        "weight 0.7": _loader(source_windows, [0.7, 0.3], batch_size=2, accumulation=2),
        "different": MixtureLoader(_sources(source_windows, [0.8, 0.2], names=("a", "b")), batch_size=2, accumulation=2, seed=0),
        "world_size=1": _loader(source_windows, [0.8, 0.2], batch_size=1, accumulation=2, world_size=2),
        "accumulation=2": _loader(source_windows, [0.8, 0.2], batch_size=2, accumulation=1),
        "seed=0": _loader(source_windows, [0.8, 0.2], batch_size=2, accumulation=2, seed=5),
    }
    for expected, other in cases.items():
        with pytest.raises(DataError) as info:
            other.load_state_dict(state)
        message = str(info.value)
        assert "\n" not in message and (expected in message or "mixture" in message), (expected, message)
    with pytest.raises(DataError, match="version"):
        loader.load_state_dict({**state, "version": 1})
    with pytest.raises(DataError, match="malformed"):
        loader.load_state_dict({"version": 2})
    with pytest.raises(DataError, match="inconsistent"):
        loader.load_state_dict({**state, "positions": state["positions"] + 4})
