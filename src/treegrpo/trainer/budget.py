"""A wall-clock budget kept by measuring while running, not by a rate measured on another machine.

Before each iteration (and each intermediate evaluation) the loop asks whether it still fits
together with the final evaluation and export; the estimates are the slowest iteration of the
last few and the slowest evaluation so far, so a slower machine simply runs fewer iterations.
"""

from __future__ import annotations

import math
import time
from collections import deque


class TimeBudget:
    """``minutes`` of wall time from ``start`` (0 = unlimited)."""

    def __init__(self, minutes: float, start: float) -> None:
        self.deadline = start + minutes * 60 if minutes > 0 else math.inf
        self.iterations: deque[float] = deque(maxlen=3)
        self.evaluation_seconds = 0.0
        self.export_seconds = 0.0

    @property
    def limited(self) -> bool:
        return math.isfinite(self.deadline)

    def record_iteration(self, seconds: float) -> None:
        """One iteration's wall time (the estimate is the slowest of the last three)."""
        self.iterations.append(seconds)

    def record_evaluation(self, seconds: float) -> None:
        """One evaluation's wall time (the estimate is the slowest so far)."""
        self.evaluation_seconds = max(self.evaluation_seconds, seconds)

    def fits(self, *, iterations: int = 0, evaluations: int = 0) -> bool:
        """Whether that much more work, then the final evaluation and export, ends before the deadline."""
        iteration = max(self.iterations) if self.iterations else 0.0
        need = iterations * iteration + (evaluations + 1) * self.evaluation_seconds + self.export_seconds
        return time.time() + need <= self.deadline
