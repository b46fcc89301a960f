"""Likelihood-free objectives on clean samples: DiffusionNFT and Advantage Weighted Matching (AWM).

Neither needs a trajectory's log-probabilities: a finished sample ``x0`` (any sampler's, flat ODE
or a tree's leaf) is re-noised along the forward process, ``x_s = (1 - s) x0 + s n`` with fresh
noise ``n`` at a sampler sigma ``s``, and the velocity the model predicts there is compared with the
flow-matching target ``n - x0`` (the SD3 / FLUX convention, which both papers use).

DiffusionNFT (Zheng et al., arXiv 2509.16117, Theorem 3.2, Eq. 5, and section 3.3): with the
sampling ("old") policy's velocity ``v_old`` and the optimality probability ``r`` in [0, 1],

    v+ = beta v + (1 - beta) sg(v_old)        (implicit positive policy)
    v- = (1 + beta) sg(v_old) - beta v         (implicit negative policy)
    L  = (c / beta) [ r e(v+) + (1 - r) e(v-) ]

where ``e(u) = mean |x0_hat(u) - x0|^2 / sg(max(mean |x0_hat(u) - x0|, 1e-5))`` is the adaptive
weighting of section 3.3 with ``x0_hat(u) = x_s - s u``, and ``c`` is the advantage clip (the
official code multiplies by ``adv_clip_max = 5``). ``r = 1/2 + 1/2 clip(A, -c, c) / c``
(Algorithm 1, lines 4-5) from an advantage normalised by the global reward std.

AWM (Xue et al., arXiv 2509.25050; the official code, on-policy with one optimizer step, where
the PPO ratio is identically 1): the policy loss ``-A_hat rho`` with ``log rho = logp - sg(logp)``
and ``logp = -(s / p) ((l + 1e-10)^p - 1e-10^p)`` ("ghuber", p = 0.25), ``l = mean |v - (n - x0)|^2``,
has the gradient of ``A_hat (s / p) ((l + 1e-10)^p - 1e-10^p)``, the form computed here, with
``A_hat = clip(A, -c, c) / c``.

Pure functions; the caller supplies velocities, samples and sigmas.
"""

from __future__ import annotations

import math

import torch

from treegrpo.choices import Choice

ADAPTIVE_FLOOR = 1e-5
"""DiffusionNFT's floor on the adaptive weight's denominator (``clip(min=1e-5)`` in the official code)."""
GHUBER_EPS = 1e-10
"""AWM's offset inside the generalised Huber weighting (keeps ``l^p`` differentiable at 0)."""


class TimestepSampling(Choice):
    """``loss.timesteps``: DiffusionNFT's per-sample random steps, or AWM's strata shared by the batch."""

    per_sample = "per_sample"
    stratified = "stratified"


class DecaySchedule(Choice):
    """How far a slow copy of the trained weights trails them, by optimizer steps (see :func:`decay`)."""

    none = "none"
    linear_to_0_5 = "linear_to_0_5"
    delayed_linear_to_0_999 = "delayed_linear_to_0_999"
    linear_to_0_3 = "linear_to_0_3"


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: ``[N, ...] -> [N]``."""
    return values.reshape(values.shape[0], -1).mean(dim=1)


def _expand(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N]`` -> broadcastable to ``like`` ``[N, ...]``."""
    return per_sample.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The forward process ``x_s = (1 - s) x0 + s n`` per sample (``sigma`` ``[N]``)."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def optimality_probability(advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """DiffusionNFT's ``r = 1/2 + 1/2 clip(A, -c, c) / c`` in [0, 1] (Algorithm 1, line 5)."""
    return 0.5 + 0.5 * advantages.clamp(-clip, clip) / clip


def adaptive_x0_error(velocity: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``mean |x0_hat - x0|^2 / sg(max(mean |x0_hat - x0|, 1e-5))`` with ``x0_hat = x_s - s v``: ``[N]``."""
    x0_hat = x_s - _expand(sigma, x_s) * velocity
    error = x0_hat - x0
    with torch.no_grad():
        weight = _per_sample_mean(error.double().abs()).clamp_min(ADAPTIVE_FLOOR).to(error.dtype)
    return _per_sample_mean(error**2) / weight


def nft_loss(
    velocity: torch.Tensor, old_velocity: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
    r: torch.Tensor, beta: float, scale: float,
) -> torch.Tensor:
    """DiffusionNFT's per-sample loss ``(scale / beta) [r e(v+) + (1 - r) e(v-)]``: ``[N]`` (see the module docstring)."""
    if not beta > 0:
        raise ValueError(f"loss.nft_beta must be > 0, got {beta}")
    old = old_velocity.detach()
    positive = beta * velocity + (1 - beta) * old
    negative = (1 + beta) * old - beta * velocity
    return (scale / beta) * (r * adaptive_x0_error(positive, x_s, x0, sigma)
                             + (1 - r) * adaptive_x0_error(negative, x_s, x0, sigma))


def awm_loss(velocity: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, advantages: torch.Tensor,
             power: float) -> torch.Tensor:
    """AWM's per-sample loss ``A_hat (s / p) ((l + eps)^p - eps^p)``, ``l = mean |v - target|^2``: ``[N]``.

    ``advantages`` are ``A_hat`` (already clipped and scaled); ``power`` is ``p`` (1 gives the plain
    sigma-weighted flow-matching loss times ``A_hat``).
    """
    if not power > 0:
        raise ValueError(f"loss.awm_power must be > 0, got {power}")
    squared = _per_sample_mean((velocity - target.to(velocity.dtype)) ** 2)
    weighted: torch.Tensor = (torch.pow(squared + GHUBER_EPS, power) - GHUBER_EPS**power) / power
    return advantages.to(weighted.dtype) * sigma.to(weighted.dtype) * weighted


def velocity_kl(velocity: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The velocity-space KL surrogate both official codes use: ``mean |v - v_other|^2`` per sample ``[N]``."""
    return _per_sample_mean((velocity - other.detach()) ** 2)


def decay(schedule: DecaySchedule, step: int) -> float:
    """The weight ``eta`` of the old copy in ``theta_old <- eta theta_old + (1 - eta) theta`` after ``step``
    optimizer steps: DiffusionNFT's ``min(0.001 i, 0.5)`` and its delayed ``min(0.0075 (i - 75), 0.999)``;
    AWM's EMA term ``min(0.001 i, 0.3)``; ``none``: 0 (the copy follows the policy)."""
    schedule = DecaySchedule(schedule)  # an unknown name raises ValueError
    if schedule is DecaySchedule.none:
        return 0.0
    if schedule is DecaySchedule.linear_to_0_5:
        return min(0.001 * step, 0.5)
    if schedule is DecaySchedule.delayed_linear_to_0_999:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    return min(0.001 * step, 0.3)


def draws_per_sample(num_steps: int, timesteps: TimestepSampling, fraction: float, draws: int) -> int:
    """How many training points each clean sample gets (what :func:`per_sample_steps` / :func:`stratified_steps` draw)."""
    if TimestepSampling(timesteps) is TimestepSampling.stratified:
        last = max(2, int(num_steps * fraction))
        return min(draws, last - 1)
    return max(1, int(num_steps * fraction))


def per_sample_steps(samples: int, num_steps: int, keep_fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """DiffusionNFT's training steps: each sample a random permutation of the sampler's steps, the first
    ``int(num_steps * keep_fraction)`` kept (at least 1): ``[samples, kept]`` step indices."""
    kept = max(1, int(num_steps * keep_fraction))
    keys = torch.rand(samples, num_steps, generator=generator)
    return keys.argsort(dim=1)[:, :kept]


def stratified_steps(samples: int, num_steps: int, draws: int, first: int, range_fraction: float,
                     generator: torch.Generator | None) -> torch.Tensor:
    """AWM's training steps: one step drawn in each of ``draws`` strata of ``[first, int(num_steps * range_fraction))``
    (``first`` = 1 leaves out sigma = 1), the same steps for every sample: ``[samples, draws]`` step indices."""
    last = max(first + 1, int(num_steps * range_fraction))
    draws = min(draws, last - first)
    edges = [first + math.floor(i * (last - first) / draws) for i in range(draws + 1)]
    picks = [lo + int(torch.randint(hi - lo, (1,), generator=generator)) for lo, hi in zip(edges[:-1], edges[1:])]
    return torch.tensor(picks, dtype=torch.long).expand(samples, draws).clone()
