"""What a run shows while it trains: one bar over the run on a terminal, one line per evaluation in a log.

The bar counts iterations, or minutes when the run has a wall-clock budget (``train.max_minutes``),
and shows the last iteration's reward and the last held-out score. Log lines of the ``treegrpo``
logger are printed above the bar. When stderr is not a terminal there is no bar; if the logger's
INFO lines are off as well (the demo without ``--verbose``), each evaluation prints one short line
so a log still shows the run moving.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Iterator, Optional, TextIO



class RunProgress:
    """The run's bar (terminal) or per-evaluation lines (log without INFO lines); silent when disabled."""

    def __init__(self, *, enabled: bool, iterations: int, budget_minutes: float, start_iteration: int,
                 stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.budget_minutes = budget_minutes
        self.iterations = iterations
        self.started = time.time()
        self.reward: Optional[float] = None
        self.score: Optional[str] = None
        self.bar: Any = None
        self.lines = enabled and not self.stream.isatty() and not logging.getLogger("treegrpo").isEnabledFor(logging.INFO)
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            if budget_minutes:
                self.bar = tqdm(total=round(budget_minutes, 1), desc="training", unit="min", file=self.stream,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min{postfix}")
            else:
                self.bar = tqdm(total=iterations, initial=start_iteration, desc="training", unit="it", file=self.stream)

    @contextlib.contextmanager
    def shown(self) -> Iterator["RunProgress"]:
        """Keep the bar at the bottom while log lines print above it; close it at the end."""
        if self.bar is None:
            yield self
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm():
                yield self
        finally:
            self.bar.close()

    def iteration(self, step: int, reward: float) -> None:
        """After iteration ``step`` (1-based) with mean leaf reward ``reward``."""
        self.reward = reward
        if self.bar is None:
            return
        if self.budget_minutes:
            self.bar.n = min(self.bar.total, round((time.time() - self.started) / 60, 1))
        else:
            self.bar.n = step
        self._postfix(step)

    def evaluation(self, step: int, result: dict[str, float]) -> None:
        """After the held-out evaluation at ``step``: its score (and standard error), and the judges' score, on the bar or as a line."""
        if "eval/score" not in result:
            return
        se = result.get("eval/score_se")
        self.score = f"{result['eval/score']:.3f}" + (f" +- {se:.3f}" if se is not None else "")
        if "eval/judge_score" in result:  # the held-out judge beside the training objective
            self.score += f", judge {result['eval/judge_score']:.3f}"
        if self.bar is not None:
            self._postfix(step)
        elif self.lines:
            minutes = (time.time() - self.started) / 60
            print(f"{minutes:5.1f} min  iteration {step}  held-out {self.score}", file=self.stream, flush=True)

    def _postfix(self, step: int) -> None:
        """``it 12  reward 0.612  held-out 0.640 +- 0.008`` after the bar."""
        parts = [f"it {step}"] if self.budget_minutes else []
        if self.reward is not None:
            parts.append(f"reward {self.reward:.3f}")
        if self.score is not None:
            parts.append(f"held-out {self.score}")
        self.bar.set_postfix_str("  ".join(parts), refresh=True)


def rollout_bar(enabled: bool, iteration: int, total_steps: int) -> Any:
    """A transient bar over one iteration's denoising steps (all chunks), shown only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, desc=f"iter {iteration + 1} rollout", leave=False,
                disable=not (enabled and sys.stderr.isatty()))
