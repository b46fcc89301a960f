"""Optimisation helpers shared by the RL trainer and the demo's pretraining.

The learning-rate factor (linear warm-up, then constant, linear or cosine decay to 0) and an
exponential moving average of named weights.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from treegrpo.choices import Choice


class LrSchedule(Choice):
    """Learning-rate decay after the warm-up (``train.lr_schedule``; stepped once per iteration)."""

    constant = "constant"
    cosine = "cosine"
    linear = "linear"


def lr_factor(schedule: LrSchedule, warmup: int, total: int, n: int) -> float:
    """Multiplier of the base learning rate after ``n`` scheduler steps of ``total``."""
    if warmup > 0 and n < warmup:
        return (n + 1) / warmup
    if schedule == LrSchedule.constant:
        return 1.0
    progress = min(1.0, (n - warmup) / max(1, total - warmup))
    if schedule == LrSchedule.linear:
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Ema:
    """Exponential moving average of named weights (float32 shadows).

    With ``warmup`` the decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates,
    so that an average started at random weights forgets them quickly.
    """

    def __init__(self, parameters: dict[str, torch.Tensor], decay: float, *, warmup: bool = False) -> None:
        self.parameters = parameters
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {name: p.detach().to(torch.float32).clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        """``shadow = d * shadow + (1 - d) * weight`` with the (warmed-up) decay ``d``, or this call's ``decay``
        (a schedule the caller keeps, e.g. DiffusionNFT's ``min(0.001 i, 0.5)``)."""
        self.updates += 1
        if decay is None:
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for name, parameter in self.parameters.items():
            self.shadow[name].lerp_(parameter.detach().to(torch.float32), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the weights hold the average; the trained weights come back after."""
        saved = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.copy_to_weights()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(saved[name])

    @torch.no_grad()
    def copy_to_weights(self) -> None:
        """Load the average into the weights for good."""
        for name, parameter in self.parameters.items():
            parameter.copy_(self.shadow[name].to(parameter.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the shadows."""
        return {name: value.to("cpu").contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore saved shadows."""
        for name in self.shadow:
            self.shadow[name] = state[name].to(self.shadow[name].device, torch.float32).clone()
