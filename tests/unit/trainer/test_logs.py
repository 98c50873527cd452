"""Run-log helpers (trainer.logs): the step bar's rate and ETA leave eval and checkpoint time out."""

from __future__ import annotations

import io

from tqdm import tqdm

from trainer.logs import exclude_from_rate


class Clock:
    """A clock the test moves by hand, so the figures do not depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eval_time_is_left_out_of_the_step_bars_rate_and_eta():
    clock = Clock()
    bars = {}
    for excluded in (False, True):
        bar = tqdm(total=100, file=io.StringIO(), mininterval=0, miniters=1, smoothing=0.3)
        bar._time = clock  # tqdm's own clock hook
        bar.start_t = bar.last_print_t = clock.now
        for _ in range(10):  # ten steps of 1 s
            clock.now += 1
            bar.update(1)
        clock.now += 120  # a 2-minute eval
        if excluded:
            exclude_from_rate(bar, 120)
        clock.now += 1
        bar.update(1)
        bars[excluded] = bar.format_dict
        bar.close()
    with_eval, without = bars[False], bars[True]
    assert without["elapsed"] == 11 and with_eval["elapsed"] == 131
    eta = (without["total"] - without["n"]) / without["rate"]
    assert 80 <= eta <= 100, eta  # 89 steps left at ~1 s/step
    assert (with_eval["total"] - with_eval["n"]) / with_eval["rate"] > 3 * eta  # what users saw before
