"""Which optimizer steps never reach the weights: non-finite ones always, loss and grad-norm spikes
when the spike guard is on (the default).

- A step whose loss or gradient norm is NaN or infinite is skipped: the optimizer does not step,
  so the weights and AdamW's moments stay exactly as they were. The step still counts (the data
  position and the learning-rate schedule move on), and the loop logs it with its windows.
- Spike guard (the rule of OLMo-core's SkipStepAdamW): once `warmup` accepted steps have been
  seen, a step is skipped when its loss > mean + sigma x std, or its grad norm > mean + sigma x
  std, over the last `window` accepted steps (sample standard deviation). Defaults as OLMo-core:
  window 128, sigma 6, warm-up 64 (its window // 2). One difference, on purpose: a skipped step's
  values never enter the window (OLMo-core appends them first), so one spike does not widen the
  band that must catch the next, and a lasting jump in the loss stops the run after
  `max_consecutive` skips instead of being absorbed unnoticed.
- `max_consecutive` skips in a row (any reason) stop the run with a one-line TrainingError; the
  loop raises it before anything is saved, so the last checkpoint on disk is the last good one.
- Inputs are the all-reduced loss and the global grad norm, identical on every process, and the
  decision is a pure function of them and the state: every process decides the same.
- State: a small JSON dict (two lists of floats, counters) saved in trainer_state.json; floats
  round-trip through JSON exactly, so a resumed run decides as the uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Optional


class StepGuard:
    """Decides, step by step, whether the optimizer may apply a step's gradients."""

    def __init__(self, *, enabled: bool, window: int, sigma: float, warmup: int, max_consecutive: int) -> None:
        self.enabled = bool(enabled)
        self.window, self.sigma, self.warmup = int(window), float(sigma), int(warmup)
        self.max_consecutive = int(max_consecutive)
        self.losses: deque[float] = deque(maxlen=self.window)
        self.grad_norms: deque[float] = deque(maxlen=self.window)
        self.consecutive = 0
        self.skipped_nonfinite = 0
        self.skipped_spike = 0

    @property
    def skipped(self) -> int:
        return self.skipped_nonfinite + self.skipped_spike

    def _spike(self, value: float, history: deque[float], what: str) -> Optional[str]:
        mean = statistics.fmean(history)
        std = statistics.stdev(history)
        if value > mean + self.sigma * std:
            return f"{what} spike: {value:.4g} > mean {mean:.4g} + {self.sigma:g} x std {std:.4g} of the last {len(history)} accepted steps"
        return None

    def observe(self, loss: float, grad_norm: float) -> Optional[str]:
        """Record one step; return why it must be skipped, or None to apply it."""
        reason = None
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason = f"non-finite {'loss' if not math.isfinite(loss) else 'grad norm'} (loss {loss}, grad norm {grad_norm})"
            self.skipped_nonfinite += 1
        elif self.enabled and len(self.losses) >= self.warmup:
            reason = self._spike(loss, self.losses, "loss") or self._spike(grad_norm, self.grad_norms, "grad norm")
            if reason:
                self.skipped_spike += 1
        if reason is None:
            self.losses.append(float(loss))
            self.grad_norms.append(float(grad_norm))
            self.consecutive = 0
        else:
            self.consecutive += 1
        return reason

    @property
    def must_stop(self) -> bool:
        return self.consecutive >= self.max_consecutive

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "consecutive": self.consecutive,
                "skipped_nonfinite": self.skipped_nonfinite, "skipped_spike": self.skipped_spike}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint; the window length is this run's (older values drop out)."""
        self.losses = deque((float(x) for x in state.get("losses", [])), maxlen=self.window)
        self.grad_norms = deque((float(x) for x in state.get("grad_norms", [])), maxlen=self.window)
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.skipped_spike = int(state.get("skipped_spike", 0))
