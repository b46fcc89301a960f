"""Numerical guards: find non-finite rewards, log-probs, ratios, losses and gradients, skip the
update they would poison, count them, and stop a run that keeps producing them.

The trainer asks these functions *where* a quantity went non-finite (which reward, which
prompts, which steps, which minibatch); :class:`NonFiniteGuard` turns one iteration's findings
into metrics (``nonfinite_skips``, ``nonfinite``, ``nonfinite_in_a_row``) and raises
:class:`NonFiniteError` after ``train.max_nonfinite_in_a_row`` bad iterations in a row.

A remote reward's NaN is not a fault but "not scored" (:mod:`treegrpo.rewards.base`):
:class:`UnscoredGuard` counts those images (``reward_unscored``) and the iterations in a row in which
nothing was scored; the trainer stops with :class:`RewardUnavailable` after
``train.max_unscored_in_a_row`` of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import torch

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The run produced non-finite values too many iterations in a row (one line, names the fix)."""


def _first(items: Sequence[Any], limit: int = 3) -> str:
    """The first ``limit`` items as a short list (``...`` when there are more)."""
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def reward_findings(components: dict[str, torch.Tensor], prompts: Sequence[str],
                    abstaining: Collection[str] = ()) -> list[str]:
    """One finding per reward whose scores hold NaN / inf, naming the prompts of those images; the NaN of an
    ``abstaining`` reward (a remote judge) means "not scored" and is no finding (its inf still is)."""
    findings = []
    for name, scores in components.items():
        values = scores.detach().cpu()
        bad = torch.nonzero(torch.isinf(values) if name in abstaining else ~torch.isfinite(values)).squeeze(1).tolist()
        if bad:
            texts = [prompts[i] for i in bad if i < len(prompts)]
            findings.append(f"reward {name}: {len(bad)} of {scores.numel()} scores non-finite (prompts {_first(texts)})")
    return findings


def log_prob_findings(log_prob: torch.Tensor, steps: torch.Tensor) -> list[str]:
    """A finding when rollout edge log-probs hold NaN / inf, naming the denoising steps."""
    bad = ~torch.isfinite(log_prob.detach())
    if not bool(bad.any()):
        return []
    where = sorted(set(steps[bad.to(steps.device)].tolist()))
    return [f"log_prob: {int(bad.sum())} of {log_prob.numel()} rollout edges non-finite (steps {_first(where)})"]


def stats_findings(stats: dict[str, float], keys: Sequence[str] = ("ratio_mean", "ratio_min", "ratio_max")) -> list[str]:
    """A finding when the update's importance ratios were non-finite."""
    bad = [key for key in keys if key in stats and not torch.isfinite(torch.tensor(stats[key]))]
    return [f"ratio: non-finite {', '.join(bad)} in the update"] if bad else []


@dataclass
class NonFiniteGuard:
    """Counts bad iterations; stops the run after ``limit`` in a row."""

    limit: int
    in_a_row: int = 0
    findings: list[str] = field(default_factory=list)

    def end_iteration(self, step: int, findings: list[str], skips: int) -> dict[str, Any]:
        """Metrics of one iteration; logs each finding; resets the streak on a clean iteration."""
        self.findings = list(findings)
        if not findings:
            self.in_a_row = 0
            return {"nonfinite_skips": 0, "nonfinite": "", "nonfinite_in_a_row": 0}
        self.in_a_row += 1
        for finding in findings:
            logger.warning("step %d: non-finite %s; update skipped (%d in a row)", step, finding, self.in_a_row)
        quantities = sorted({finding.split(":")[0].split(" ")[0] for finding in findings})
        return {"nonfinite_skips": skips, "nonfinite": ",".join(quantities), "nonfinite_in_a_row": self.in_a_row}

    def check(self, step: int) -> None:
        """Raise :class:`NonFiniteError` once ``limit`` bad iterations came in a row."""
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"stopped at step {step}: non-finite values in {self.in_a_row} iterations in a row "
                f"(last: {self.findings[0]}); fix the reward or model, lower train.lr, or raise "
                "train.max_nonfinite_in_a_row; the last good checkpoint is kept"
            )


class RewardUnavailable(RuntimeError):
    """A remote reward scored no image for ``train.max_unscored_in_a_row`` iterations; a checkpoint was saved first."""

    def __init__(self, step: int, in_a_row: int, checkpoint: Path, resume: str) -> None:
        self.step, self.checkpoint = step, checkpoint
        super().__init__(
            f"stopped after step {step}: the remote reward scored no image in {in_a_row} iterations in a row (the "
            f"warnings above say why); checkpoint {checkpoint} saved; once the judge or reward server answers again, "
            f"continue with `{resume}` (or raise train.max_unscored_in_a_row)"
        )


@dataclass
class UnscoredGuard:
    """Counts the images remote rewards did not score and the iterations in a row in which they scored none."""

    limit: int
    in_a_row: int = 0

    def end_iteration(self, unscored: int, leaves: int) -> dict[str, Any]:
        """Metrics of one iteration: ``unscored`` of its ``leaves`` had no score (every process's leaves)."""
        nothing = unscored == leaves > 0
        self.in_a_row = self.in_a_row + 1 if nothing else 0
        if nothing:
            logger.warning("no image of this iteration was scored: update skipped (%d in a row, the run stops at %d)",
                           self.in_a_row, self.limit)
        return {"reward_unscored": unscored, "reward_unscored_in_a_row": self.in_a_row}

    @property
    def exhausted(self) -> bool:
        """Whether the run must stop: nothing scored ``limit`` iterations in a row."""
        return self.in_a_row >= self.limit
