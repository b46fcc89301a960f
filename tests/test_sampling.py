"""Sampling steps against independent computations: torch.distributions, diffusers' schedulers."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from treegrpo.math.sampling import DDIMStepper, FlowMatchStepper, ddim_step, flow_step


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(mean, std).log_prob(x).mean(dim=tuple(range(1, x.ndim)))


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_flow_step_log_prob_is_the_gaussian_density(sde_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 5, generator=g)
    v = torch.randn(6, 4, 5, 5, generator=g)
    sigma = torch.tensor([0.95, 0.8, 0.6, 0.4, 0.3, 0.1])
    sigma_next = sigma - torch.tensor([0.05, 0.1, 0.2, 0.1, 0.25, 0.05])
    out = flow_step(v, x, sigma, sigma_next, 0.7, generator=g, sde_type=sde_type)
    expected = _normal_log_prob(out.prev_sample, out.mean, out.std)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-5)
    # scoring a given sample returns the same numbers
    again = flow_step(v, x, sigma, sigma_next, 0.7, prev_sample=out.prev_sample, sde_type=sde_type)
    torch.testing.assert_close(again.log_prob, out.log_prob)


def test_flow_step_sde_matches_the_written_formula() -> None:
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    sigma, sigma_next, level = 0.6, 0.45, 0.7
    dt = sigma_next - sigma
    s_t = level * math.sqrt(sigma / (1 - sigma))
    mean = x * (1 + s_t**2 * dt / (2 * sigma)) + v * (1 + s_t**2 * (1 - sigma) / (2 * sigma)) * dt
    out = flow_step(v, x, sigma, sigma_next, level)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std, torch.full_like(x, s_t * math.sqrt(-dt)))


def test_flow_step_at_sigma_one_uses_sigma_max_in_the_denominator() -> None:
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    out = flow_step(v, x, 1.0, 0.9, 0.7, sigma_max=0.9)
    s_t = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    torch.testing.assert_close(out.std, torch.full_like(x, s_t * math.sqrt(0.1)))
    assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.mean).all()


def test_flow_step_noise_level_zero_equals_diffusers_euler_step() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    stepper = FlowMatchStepper(scheduler.sigmas, noise_level=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, 6, generator=g)
    ours = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(3, 4, 6, 6, generator=g)
        x = scheduler.step(v, t, x).prev_sample
        out = stepper.step(v, ours, torch.full((3,), i), stochastic=True)
        assert torch.all(out.log_prob == 0) and torch.all(out.std == 0)
        ours = out.prev_sample
        torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_flow_step_samples_have_the_stated_mean_and_std() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4).expand(200_000, 4).contiguous()
    v = torch.randn(1, 4).expand(200_000, 4).contiguous()
    out = flow_step(v, x, 0.7, 0.6, 0.8, generator=g)
    torch.testing.assert_close(out.prev_sample.mean(0), out.mean[0], atol=5e-3, rtol=0)
    torch.testing.assert_close(out.prev_sample.std(0), out.std[0], atol=5e-3, rtol=0)


def test_flow_step_per_element_sigmas_equal_separate_calls() -> None:
    x, v = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    child = torch.randn(3, 2, 4)
    sigma = torch.tensor([0.9, 0.5, 0.2])
    sigma_next = torch.tensor([0.8, 0.3, 0.0])
    batched = flow_step(v, x, sigma, sigma_next, 0.7, prev_sample=child, sigma_max=0.95)
    for i in range(3):
        one = flow_step(v[i : i + 1], x[i : i + 1], float(sigma[i]), float(sigma_next[i]), 0.7,
                        prev_sample=child[i : i + 1], sigma_max=0.95)
        torch.testing.assert_close(batched.log_prob[i : i + 1], one.log_prob)
        torch.testing.assert_close(batched.mean[i : i + 1], one.mean)


def test_flow_step_computes_in_float32_for_low_precision_inputs() -> None:
    x, v = torch.randn(2, 8).bfloat16(), torch.randn(2, 8).bfloat16()
    out = flow_step(v, x, 0.5, 0.4, 0.7)
    assert out.prev_sample.dtype == out.log_prob.dtype == out.mean.dtype == torch.float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("spacing, steps", [("leading", 10), ("trailing", 7)])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_step_equals_diffusers(prediction_type: str, eta: float, spacing: str, steps: int,
                                    set_alpha_to_one: bool) -> None:
    """Every prediction type (``sample`` checks the eps recovered from it) and both final alphas (with
    ``set_alpha_to_one`` the step to timestep 0 uses ``alphas_cumprod[0]``, not the final alpha), on
    non-square latents."""
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one, prediction_type=prediction_type,
                              beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    stepper = DDIMStepper(scheduler.alphas_cumprod, scheduler.timesteps, float(scheduler.final_alpha_cumprod),
                          eta=eta, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 7, generator=g)
    ours = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        out_model = torch.randn(2, 4, 5, 7, generator=g)
        noise = torch.randn(2, 4, 5, 7, generator=g)
        x = scheduler.step(out_model, t, x, eta=eta, variance_noise=noise).prev_sample
        out = stepper.step(out_model, ours, torch.full((2,), i), stochastic=True)
        ours = out.mean + out.std * noise
        torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
        if eta == 0:
            assert torch.all(out.log_prob == 0)


def test_ddim_log_prob_is_the_gaussian_density() -> None:
    x, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    a_t = torch.tensor([0.1, 0.3, 0.5, 0.8])
    a_prev = torch.tensor([0.2, 0.4, 0.7, 0.9])
    out = ddim_step(eps, x, a_t, a_prev, 1.0)
    torch.testing.assert_close(out.log_prob, _normal_log_prob(out.prev_sample, out.mean, out.std))


def test_unknown_variants_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="'sde' or 'cps'"):
        flow_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.4, 0.7, sde_type="ode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="v_prediction"):
        ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.6, 1.0, prediction_type="x0")  # type: ignore[arg-type]
