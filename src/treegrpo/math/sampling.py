"""Single denoising steps that also return the Gaussian log-probability of the step.

Pure tensor functions: no I/O, no module state. Every function computes in float32 whatever the
input dtype, accepts per-batch-element schedule values (tensors of shape ``[B]``) so that nodes of
different trees at different steps can share one call, and returns a :class:`StepOutput`.

Two families:
- :func:`flow_step` for flow-matching models (SD3/3.5, FLUX.1): the Flow-GRPO SDE step, or its
  coefficients-preserving variant ("cps"); with ``noise_level == 0`` it is the Euler ODE step.
- :func:`ddim_step` for diffusion models (SD1.x/2.x): DDIM with ``eta > 0`` (as DDPO uses).

Steppers (:class:`FlowMatchStepper`, :class:`DDIMStepper`) bind a scheduler's tables to those
functions so that callers only pass integer step indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch

from treegrpo.choices import Choice


class SdeType(Choice):
    """``sampling.sde_type``: Flow-GRPO's SDE step, or its coefficients-preserving variant."""

    sde = "sde"
    cps = "cps"


PredictionType = Literal["epsilon", "v_prediction", "sample"]


class StepOutput(NamedTuple):
    """Result of one step: the next sample, its log-probability (``[B]``), mean and std."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_element(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcastable float32 view of a scalar or ``[B]`` schedule value against ``like``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under ``N(mean, std^2)`` averaged over all non-batch dimensions.

    Elements whose std is zero (deterministic steps) get log-probability 0.
    """
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    log_density = (
        -((x - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - 0.5 * math.log(2 * math.pi)
    )
    log_density = torch.where(std > 0, log_density, torch.zeros_like(log_density))
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def _draw_or_take(
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if prev_sample is not None:
        return prev_sample.to(torch.float32)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return mean + std * noise


def flow_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: torch.Tensor | float,
    *,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sde_type: SdeType = SdeType.sde,
    sigma_max: torch.Tensor | float | None = None,
) -> StepOutput:
    """One flow-matching step ``sigma -> sigma_next`` (``sigma`` runs from 1 = noise to 0 = data).

    ``model_output`` is the velocity ``v`` (x' = x + dt * v on the ODE). With ``prev_sample`` the
    step only scores that sample instead of drawing one.

    ``sde_type="sde"`` is Flow-GRPO's SDE: ``s_t = noise_level * sqrt(sigma / (1 - sigma))``;
    where ``sigma == 1`` the root is infinite and, as Flow-GRPO does, ``sigma_max`` (the
    schedule's second sigma; ``sigma_next`` when not given) replaces sigma in the denominator.
    ``sde_type="cps"`` is the coefficients-preserving variant: std ``sigma_next *
    sin(noise_level * pi / 2)``, mean a re-noising of the predicted clean sample. Its log-prob is
    the true Gaussian log-density (Flow-GRPO's cps uses the unscaled squared error instead).
    """
    x = sample.to(torch.float32)
    v = model_output.to(torch.float32)
    s = _per_element(sigma, x)
    s_next = _per_element(sigma_next, x)
    level = _per_element(noise_level, x)
    dt = s_next - s

    if sde_type == "sde":
        s_max = s_next if sigma_max is None else _per_element(sigma_max, x)
        denominator = 1 - torch.where(s >= 1, s_max, s)
        std_dev_t = level * torch.sqrt(s / denominator)
        mean = x * (1 + std_dev_t**2 * dt / (2 * s)) + v * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt
        std = std_dev_t * torch.sqrt(-dt)
    elif sde_type == "cps":
        std = s_next * torch.sin(level * math.pi / 2)
        x0 = x - s * v
        noise_estimate = x + (1 - s) * v
        mean = x0 * (1 - s_next) + noise_estimate * torch.sqrt((s_next**2 - std**2).clamp_min(0))
    else:
        raise ValueError(f"unknown sde_type {sde_type!r}; use 'sde' or 'cps'")

    # noise_level == 0 gives exactly the Euler (ODE) step, whatever the variant.
    ode = level == 0
    mean = torch.where(ode, x + dt * v, mean)
    std = torch.where(ode, torch.zeros_like(std), std).expand_as(mean)
    prev = _draw_or_take(mean, std, prev_sample, generator)
    return StepOutput(prev, gaussian_log_prob(prev, mean, std), mean, std)


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    alpha_prod_t_prev: torch.Tensor | float,
    eta: torch.Tensor | float,
    *,
    prediction_type: PredictionType = "epsilon",
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DDIM step (Song et al., eq. 12) with stochasticity ``eta`` and its log-probability.

    Matches ``diffusers.DDIMScheduler.step`` (no sample clipping or thresholding) for epsilon-,
    v- and sample-prediction models. ``eta == 0`` is deterministic DDIM (log-prob 0).
    """
    x = sample.to(torch.float32)
    out = model_output.to(torch.float32)
    a_t = _per_element(alpha_prod_t, x)
    a_prev = _per_element(alpha_prod_t_prev, x)
    eta_t = _per_element(eta, x)
    beta_t = 1 - a_t

    if prediction_type == "epsilon":
        x0 = (x - beta_t.sqrt() * out) / a_t.sqrt()
        eps = out
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - beta_t.sqrt() * out
        eps = a_t.sqrt() * out + beta_t.sqrt() * x
    elif prediction_type == "sample":
        x0 = out
        eps = (x - a_t.sqrt() * x0) / beta_t.sqrt()
    else:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; use 'epsilon', 'v_prediction' or 'sample'"
        )

    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = (eta_t * variance.clamp_min(0).sqrt()).expand_as(x)
    direction = (1 - a_prev - std**2).clamp_min(0).sqrt() * eps
    mean = a_prev.sqrt() * x0 + direction
    prev = _draw_or_take(mean, std, prev_sample, generator)
    return StepOutput(prev, gaussian_log_prob(prev, mean, std), mean, std)


class Stepper(Protocol):
    """Maps (model output, sample, integer step index) to a :class:`StepOutput`.

    ``stochastic`` selects the SDE (True) or the deterministic ODE/DDIM-0 step (False) per element.
    """

    @property
    def num_steps(self) -> int: ...

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        step_index: torch.Tensor,
        stochastic: torch.Tensor | bool,
        *,
        prev_sample: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput: ...


def _stochastic_scale(stochastic: torch.Tensor | bool, scale: float, index: torch.Tensor) -> torch.Tensor:
    flags = torch.as_tensor(stochastic, device=index.device).expand(index.shape[0])
    return flags.to(torch.float32) * scale


@dataclass
class FlowMatchStepper:
    """Flow-matching stepper over a sigma table of ``num_steps + 1`` entries (last is 0).

    ``sigmas`` are what ``FlowMatchEulerDiscreteScheduler.set_timesteps`` produced (shifted),
    so the engine follows the model's own schedule exactly.
    """

    sigmas: torch.Tensor
    noise_level: float = 0.7
    sde_type: SdeType = SdeType.sde

    def __post_init__(self) -> None:
        self.sigmas = self.sigmas.detach().to(torch.float32)
        if self.sigmas.ndim != 1 or self.sigmas.shape[0] < 2:
            raise ValueError("sigmas must be a 1-D table of num_steps + 1 values ending at 0")

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0] - 1)

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        step_index: torch.Tensor,
        stochastic: torch.Tensor | bool,
        *,
        prev_sample: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        sigmas = self.sigmas.to(sample.device)
        index = step_index.to(sample.device).long()
        return flow_step(
            model_output,
            sample,
            sigmas[index],
            sigmas[index + 1],
            _stochastic_scale(stochastic, self.noise_level, index),
            prev_sample=prev_sample,
            generator=generator,
            sde_type=self.sde_type,
            sigma_max=sigmas[1],
        )


@dataclass
class DDIMStepper:
    """DDIM stepper over a diffusion model's ``alphas_cumprod`` and its inference timesteps.

    ``final_alpha_cumprod`` is what the scheduler uses past the last timestep (1.0 when
    ``set_alpha_to_one``, else ``alphas_cumprod[0]``), as ``DDIMScheduler`` does.
    """

    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor
    final_alpha_cumprod: float
    eta: float = 1.0
    prediction_type: PredictionType = "epsilon"

    def __post_init__(self) -> None:
        self.alphas_cumprod = self.alphas_cumprod.detach().to(torch.float32)
        self.timesteps = self.timesteps.detach().long()
        # as DDIMScheduler: the previous timestep is ``t - num_train_timesteps // num_inference_steps``
        step_ratio = self.alphas_cumprod.shape[0] // self.timesteps.shape[0]
        previous = self.timesteps - step_ratio
        final = torch.tensor(self.final_alpha_cumprod, dtype=torch.float32)
        self._alpha_prev = torch.where(
            previous >= 0, self.alphas_cumprod[previous.clamp_min(0)], final
        )
        self._alpha_t = self.alphas_cumprod[self.timesteps]

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        step_index: torch.Tensor,
        stochastic: torch.Tensor | bool,
        *,
        prev_sample: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        index = step_index.to(self._alpha_t.device).long()
        return ddim_step(
            model_output,
            sample,
            self._alpha_t[index].to(sample.device),
            self._alpha_prev[index].to(sample.device),
            _stochastic_scale(stochastic, self.eta, index).to(sample.device),
            prediction_type=self.prediction_type,
            prev_sample=prev_sample,
            generator=generator,
        )


class Schedule(Protocol):
    """A model's schedule for one number of steps: what its denoiser is called with, and its sampler.

    ``timesteps[i]`` is the value the denoiser receives at step ``i`` (the scheduler's own
    timesteps); ``stepper`` binds the schedule's tables to a step function.
    """

    @property
    def num_steps(self) -> int: ...

    @property
    def timesteps(self) -> torch.Tensor: ...

    def stepper(self, noise_level: float, sde_type: SdeType = SdeType.sde) -> Stepper: ...


@dataclass(frozen=True)
class FlowSchedule:
    """Flow-matching schedule: ``sigmas`` (``num_steps + 1``, ending at 0) and the denoiser's timesteps."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.timesteps.shape != (self.sigmas.shape[0] - 1,):
            raise ValueError(
                f"a flow schedule needs num_steps + 1 sigmas and num_steps timesteps, got "
                f"{tuple(self.sigmas.shape)} and {tuple(self.timesteps.shape)}"
            )

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def stepper(self, noise_level: float, sde_type: SdeType = SdeType.sde) -> FlowMatchStepper:
        """The flow step over these sigmas with SDE strength ``noise_level``."""
        return FlowMatchStepper(self.sigmas, noise_level=noise_level, sde_type=sde_type)


@dataclass(frozen=True)
class DDIMSchedule:
    """DDIM schedule of a diffusion model: ``alphas_cumprod``, inference timesteps, the final alpha."""

    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor
    final_alpha_cumprod: float
    prediction_type: PredictionType = "epsilon"

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def stepper(self, noise_level: float, sde_type: SdeType = SdeType.sde) -> DDIMStepper:
        """DDIM with ``eta = noise_level``; DDIM has one stochastic step, so ``sde_type`` must be "sde"."""
        if sde_type != "sde":
            raise ValueError(f"DDIM has no {sde_type!r} variant; use sde_type 'sde'")
        return DDIMStepper(
            self.alphas_cumprod, self.timesteps, self.final_alpha_cumprod, eta=noise_level,
            prediction_type=self.prediction_type,
        )
