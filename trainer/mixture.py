"""The training loader: which source each packed window comes from, each source's order, and the
resume position. One manifest is a mixture of one source.

A run reads one stream of windows, numbered g = 0, 1, 2, ... over all processes. Invariants:
- Optimizer step s takes positions [s*W, (s+1)*W), W = batch_size * accumulation * world_size.
  Micro-batch m of rank r holds positions s*W + (m*world_size + r)*batch_size + [0, batch_size), so
  a step's windows do not depend on how they are split over processes and micro-batches
  (2 processes x batch 1 train on exactly the windows of 1 process x batch 2). Every training
  window holds max_length tokens, so a share of windows is a share of tokens.
- The source of each position: Tijdeman's earliest-deadline schedule for the chairman assignment
  problem (R. Tijdeman, "The chairman assignment problem", Discrete Math. 32, 1980) over the
  sources of weight > 0, started at a seeded offset (0..OFFSET_RANGE-1 positions) so that seeds
  differ in phase. It keeps every source's count within 1 - 1/(2n-2) < 1 window of weight x
  positions after EVERY position, so any P consecutive windows hold weight x P +- 2 windows of a
  source: over 100 optimizer steps (>= 100 windows) each share is within 2 percentage points of
  its weight, at any batch size, accumulation or process count. (Megatron's greedy
  largest-deficit rule drifts past 1 window with 5-6 sources.) Integer arithmetic on weights in
  millionths: the same schedule on every machine.
- Order inside source i: its k-th window drawn is
  `numpy.random.default_rng([seed, i, e]).permutation(n_i)[k mod n_i]`, e = k // n_i: every pass
  (epoch) over a source is a fresh seeded order, and no window is left out of a pass. A source
  that runs out starts its next pass (logged), up to its repetition limit (`windows_limit`):
  `check_budget` refuses a plan that would pass it before step 0; drawing past it anyway (a plan
  changed on resume) is a one-line TrainingError naming the source.
- Every process computes the whole step's schedule (microseconds per window), so every process
  holds the same counts, and the state is the same on every rank: a small JSON dict
  {version, seed, world_size, batch_size, accumulation, max_length, offset, positions,
  sources: [{name, sha256, weight, num_windows, num_tokens, windows_drawn}]}. `load_state_dict`
  jumps straight there (no window read twice, none skipped, nothing replayed) and refuses a state
  for another mixture (manifests, weights, names), seed, window length or batch shape.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
import torch

from schemas.errors import DataError, TrainingError
from trainer.data import PackedWindows, collate_windows

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 1 was the single-manifest WindowLoader position of the first trainer
WEIGHT_SCALE = 10**6  # weights are honoured to six decimal places (schemas/config.py refuses smaller shares)
OFFSET_RANGE = 4096  # seeded phase of the schedule, in positions
_OFFSET_STREAM = 0x6D6978  # separates the offset's random stream from the per-source orders


def integer_weights(weights: Sequence[float]) -> list[int]:
    """Weights in millionths (sum 10**6 up to rounding; the schedule uses their own sum)."""
    return [round(w * WEIGHT_SCALE) for w in weights]


class MixtureSchedule:
    """Tijdeman's schedule: `next()` is the source of the next position.

    After t positions, source i has been chosen s_i times. At position t+1 (1-based) a source is
    eligible when lambda_i (t+1) - s_i >= delta = 1/(2n-2), and the eligible source with the earliest
    deadline (s_i + 1 - delta) / lambda_i is chosen (ties: the lower index). The state is (t, s)."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.q = integer_weights(weights)
        self.active = [i for i, q in enumerate(self.q) if q > 0]
        if not self.active:
            raise DataError("a mixture needs a source with a weight > 0; set training.mixture_weights")
        self.total = sum(self.q)
        self.m = max(2 * len(self.active) - 2, 1)  # 1/delta
        self.counts = [0] * len(self.q)
        self.t = 0

    def next(self) -> int:
        t, counts, q, total, m = self.t + 1, self.counts, self.q, self.total, self.m
        if len(self.active) == 1:
            best = self.active[0]
        else:
            best, best_num, best_den = -1, 0, 1
            for i in self.active:
                # eligible: m (q_i t - s_i Q) >= Q; deadline ~ (m (s_i + 1) - 1) / q_i, compared crosswise
                if m * (q[i] * t - counts[i] * total) >= total:
                    num, den = m * (counts[i] + 1) - 1, q[i]
                    if best < 0 or num * best_den < best_num * den:
                        best, best_num, best_den = i, num, den
        counts[best] += 1
        self.t = t
        return best

    def advance(self, positions: int) -> None:
        for _ in range(positions):
            self.next()


def epoch_order(num_windows: int, *, seed: int, source: int, epoch: int) -> np.ndarray:
    """The seeded order of source `source`'s windows in its pass `epoch`."""
    return np.random.default_rng([seed, source, epoch]).permutation(num_windows)


@dataclass(frozen=True)
class MixtureSource:
    """What the loader needs of a source."""

    name: str
    windows: PackedWindows  # its train windows
    weight: float
    sha256: str  # of its manifest.json: the identity a resume state is checked against


@dataclass
class StepBatch:
    """One optimizer step's data: this process's micro-batches and where every window came from."""

    micro_batches: list[dict[str, torch.Tensor]]
    windows: list[tuple[int, int]]  # (source, window index) of every position of the step, all processes
    step: int  # 0-based index of the step in the run
    num_tokens: int  # all processes

    def windows_by_source(self, names: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for source, index in self.windows:
            out.setdefault(names[source], []).append(index)
        return out


class MixtureLoader:
    """Seeded, deterministic, resumable steps of packed windows drawn from weighted sources."""

    def __init__(
        self,
        sources: Sequence[MixtureSource],
        *,
        batch_size: int,
        accumulation: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        max_repetitions: float | Sequence[float] = math.inf,
    ) -> None:
        if batch_size < 1 or accumulation < 1:
            raise DataError(f"batch_size={batch_size} and accumulation={accumulation} must be integers >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} of world_size {world_size} is invalid; launch with `accelerate launch`")
        lengths = {s.windows.max_length for s in sources}
        if len(lengths) != 1:
            raise DataError(f"the sources are cut into windows of different lengths {sorted(lengths)}; use one model.max_length")
        self.sources = list(sources)
        self.names = [s.name for s in sources]
        self.max_length = lengths.pop()
        self.batch_size, self.accumulation = int(batch_size), int(accumulation)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.windows_per_step = self.batch_size * self.accumulation * self.world_size
        self.max_repetitions = [max_repetitions] * len(sources) if isinstance(max_repetitions, (int, float)) else list(max_repetitions)
        self.windows_limit = [math.inf if math.isinf(r) else math.floor(r * s.windows.num_windows)
                              for r, s in zip(self.max_repetitions, sources)]
        self.offset = int(np.random.default_rng([self.seed, _OFFSET_STREAM]).integers(OFFSET_RANGE))
        self._schedule = MixtureSchedule([s.weight for s in sources])
        self._schedule.advance(self.offset)
        self._prefix = list(self._schedule.counts)
        self.positions = 0  # windows handed out so far, all processes
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    # ---- accounting -------------------------------------------------------------------------

    def windows_drawn(self, source: int) -> int:
        return self._schedule.counts[source] - self._prefix[source]

    def tokens_drawn(self, source: int) -> int:
        return self.windows_drawn(source) * self.max_length

    def passes(self, source: int) -> float:
        """Passes over the source's windows so far (1.5 = one and a half epochs)."""
        return self.windows_drawn(source) / self.sources[source].windows.num_windows

    @property
    def steps_done(self) -> int:
        return self.positions // self.windows_per_step

    def windows_needed(self, num_steps: int) -> list[int]:
        """An upper bound on each source's windows drawn after `num_steps` steps of the run (exact to
        within 2 windows: the schedule stays within 1 window of weight x positions at both ends)."""
        positions = num_steps * self.windows_per_step
        q, total = self._schedule.q, self._schedule.total
        return [0 if q[i] == 0 else min(positions, math.floor(Fraction(q[i], total) * positions) + 2) for i in range(len(q))]

    def check_budget(self, num_steps: int, *, fix: str) -> None:
        """Refuse a plan that would draw a source past its repetition limit (before any training)."""
        for i, needed in enumerate(self.windows_needed(num_steps)):
            if needed > self.windows_limit[i]:
                n = self.sources[i].windows.num_windows
                raise DataError(
                    f"source {self.names[i]!r} holds {n} train windows; {num_steps} steps draw about {needed} of them "
                    f"({needed / n:.2f} passes), more than its limit of {self.max_repetitions[i]:g} passes; {fix}"
                )

    # ---- reading ----------------------------------------------------------------------------

    def _window(self, source: int, k: int) -> int:
        """Window index of the k-th window drawn from `source` (0-based, counted over the run)."""
        n = self.sources[source].windows.num_windows
        epoch, j = divmod(k, n)
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(n, seed=self.seed, source=source, epoch=epoch))
            self._orders[source] = cached
        return int(cached[1][j])

    def next_step(self) -> StepBatch:
        """The next optimizer step's windows; this process's micro-batches are collated."""
        step, windows = self.steps_done, []
        saved = (list(self._schedule.counts), self._schedule.t)  # a step is drawn whole or not at all
        for _ in range(self.windows_per_step):
            source = self._schedule.next()
            k = self._schedule.counts[source] - self._prefix[source] - 1
            if k >= self.windows_limit[source]:
                n = self.sources[source].windows.num_windows
                self._schedule.counts, self._schedule.t = saved
                raise TrainingError(
                    f"source {self.names[source]!r} ran out at step {step + 1}: its {n} train windows were drawn "
                    f"{self.max_repetitions[source]:g} times (max_repetitions); raise training.max_repetitions, lower its weight or add data"
                )
            if k and k % self.sources[source].windows.num_windows == 0:
                logger.info("source %s: pass %d over its %d train windows starts at step %d (a fresh seeded order)",
                            self.names[source], k // self.sources[source].windows.num_windows + 1,
                            self.sources[source].windows.num_windows, step + 1)
            windows.append((source, self._window(source, k)))
        self.positions += self.windows_per_step
        b, w = self.batch_size, self.world_size
        micro_batches = []
        for m in range(self.accumulation):
            start = (m * w + self.rank) * b
            rows = [(self.sources[s].windows, i) for s, i in windows[start : start + b]]
            micro_batches.append(collate_windows(rows, self.max_length))
        return StepBatch(micro_batches=micro_batches, windows=windows, step=step, num_tokens=self.windows_per_step * self.max_length)

    # ---- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position and what it is valid for (small, JSON-serialisable, the same on every rank)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "accumulation": self.accumulation,
            "max_length": self.max_length,
            "offset": self.offset,
            "positions": self.positions,
            "sources": [
                {"name": s.name, "sha256": s.sha256, "weight": s.weight, "num_windows": s.windows.num_windows,
                 "num_tokens": s.windows.num_tokens, "windows_drawn": self.windows_drawn(i)}
                for i, s in enumerate(self.sources)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (the next step after it); refuse a state of another run's data."""
        try:
            version = state["version"]
            if version != STATE_VERSION:
                raise DataError(
                    f"the checkpoint's data-loader state has version {version!r}, this trainer reads {STATE_VERSION}; "
                    "resume with the toolkit version that wrote it, or start a new run from its weights (--model_name_or_path CHECKPOINT)"
                )
            positions = int(state["positions"])
            saved_sources = [(str(s["name"]), str(s["sha256"]), float(s["weight"]), int(s["num_windows"]), int(s["windows_drawn"]))
                             for s in state["sources"]]
            saved = {key: state[key] for key in ("seed", "world_size", "batch_size", "accumulation", "max_length")}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the checkpoint's data-loader state is malformed ({exc!r}); resume from another checkpoint or start a fresh run") from None
        ours = [(s.name, s.sha256, s.weight, s.windows.num_windows) for s in self.sources]
        if [s[:4] for s in saved_sources] != ours:
            def describe(items):
                return ", ".join(f"{name} (manifest {sha[:12]}..., weight {weight:g}, {n} windows)" for name, sha, weight, n, *_ in items)
            raise DataError(
                f"the checkpoint was trained on the mixture {describe(saved_sources)}; this run's is {describe(ours)}; "
                "resume with the same --manifest list, mixture_weights, mixture_names and max_length, or start a new output_dir"
            )
        fixes = {
            "world_size": "launch with the same number of processes (accelerate launch --num_processes {})",
            "batch_size": "set training.per_device_train_batch_size to {}",
            "accumulation": "set training.gradient_accumulation_steps to {}",
            "max_length": "set model.max_length to {}",
            "seed": "set training.seed to {}",
        }
        current = {"seed": self.seed, "world_size": self.world_size, "batch_size": self.batch_size,
                   "accumulation": self.accumulation, "max_length": self.max_length}
        for key, fix in fixes.items():
            if saved[key] != current[key]:
                raise DataError(f"the checkpoint's data position was saved with {key}={saved[key]}, this run has {current[key]}; {fix.format(saved[key])} to resume")
        drawn = [s[4] for s in saved_sources]
        if (positions < 0 or positions % self.windows_per_step or sum(drawn) != positions or min(drawn, default=0) < 0
                or any(d and self._schedule.q[i] == 0 for i, d in enumerate(drawn))):
            raise DataError(f"the checkpoint's data position ({positions} windows, per source {drawn}) is inconsistent; the state is corrupt, resume from another checkpoint")
        self._schedule.counts = [p + d for p, d in zip(self._prefix, drawn)]
        self._schedule.t = self.offset + positions
        self.positions = positions
        self._orders.clear()
