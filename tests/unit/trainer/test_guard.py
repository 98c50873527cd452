"""The step guard (trainer.guard): non-finite steps are always skipped, spikes after the warm-up,
skipped values stay out of the statistics, N in a row stop, and the state resumes exactly."""

from __future__ import annotations

import json
import math
import statistics

from trainer.guard import StepGuard


def _guard(**kwargs) -> StepGuard:
    settings = {"enabled": True, "window": 8, "sigma": 3.0, "warmup": 4, "max_consecutive": 3, **kwargs}
    return StepGuard(**settings)


def test_non_finite_values_are_skipped_even_with_the_spike_guard_off():
    guard = _guard(enabled=False)
    assert guard.observe(2.0, 1.0) is None
    assert "non-finite loss" in guard.observe(math.nan, 1.0)
    assert "non-finite grad norm" in guard.observe(2.0, math.inf)
    assert guard.skipped_nonfinite == 2 and guard.skipped_spike == 0 and guard.consecutive == 2
    assert list(guard.losses) == [2.0]  # non-finite values never enter the statistics
    assert guard.observe(100.0, 50.0) is None  # no spike check when the guard is off
    assert guard.consecutive == 0


def test_a_spike_is_skipped_after_the_warm_up_and_stays_out_of_the_window():
    guard = _guard()
    losses = [3.0, 3.1, 2.9, 3.05]
    assert guard.observe(9.0, 1.0) is None  # the first step: no history, no judgement
    guard = _guard()
    for loss in losses:
        assert guard.observe(loss, 1.0 + loss / 100) is None
    threshold = statistics.fmean(losses) + 3 * statistics.stdev(losses)
    assert guard.observe(threshold - 1e-9, 1.03) is None  # just under the band: applied
    history = list(guard.losses)
    reason = guard.observe(4.0, 1.03)
    assert reason is not None and reason.startswith("loss spike: 4 > mean")
    assert list(guard.losses) == history  # the spike did not widen the band
    grad = guard.observe(3.0, 10.0)
    assert grad is not None and grad.startswith("grad norm spike")
    assert guard.skipped_spike == 2 and guard.consecutive == 2 and not guard.must_stop
    assert guard.observe(float("nan"), 1.0) is not None and guard.must_stop  # 3 in a row, any reason


def test_a_loss_below_the_mean_is_never_a_spike():
    guard = _guard()
    for loss in (3.0, 3.1, 2.9, 3.05, 3.0):
        guard.observe(loss, 1.0 + loss / 10)
    assert guard.observe(0.1, 0.31) is None


def test_the_state_round_trips_through_json_and_decides_the_same():
    a = _guard()
    for loss in (3.0, 3.1, 2.9, 3.05, 3.02, 8.0):
        a.observe(loss, loss / 3)
    b = _guard()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    for loss, norm in ((3.01, 1.0), (5.0, 1.0), (3.0, 9.0), (2.99, 1.01)):
        assert a.observe(loss, norm) == b.observe(loss, norm)
    assert a.state_dict() == b.state_dict()
