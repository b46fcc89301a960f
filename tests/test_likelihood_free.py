"""DiffusionNFT and AWM: the losses by hand and at their limits, the step draws, the soft update, the engine's
counters, and one trainer iteration per family on tiny models (resumed exactly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_trainer import tiny_values
from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline
from treegrpo.math import likelihood_free as lf
from treegrpo.config import resolve_config
from treegrpo.engine.update import StepReport, TrainingPoints, UpdateConfig, draw_training_points, update_on_samples
from treegrpo.errors import ConfigError
from treegrpo.math.loss import LossConfig
from treegrpo.optim import Ema
from treegrpo.trainer import train

D = torch.float64


def _batch() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x0, noise, v, v_old = (torch.randn(2, 3, 2, 2, generator=generator, dtype=D) for _ in range(4))
    sigma = torch.tensor([0.3, 0.8], dtype=D)
    return x0, noise, v, v_old, sigma


def _error_by_hand(u: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """e(u) written out element by element, without the module's helpers."""
    out = []
    for i in range(u.shape[0]):
        diff = (x_s[i] - float(sigma[i]) * u[i]) - x0[i]
        out.append(float((diff**2).sum()) / diff.numel() / max(float(diff.abs().sum()) / diff.numel(), 1e-5))
    return torch.tensor(out, dtype=D)


def test_nft_loss_by_hand() -> None:
    x0, noise, v, v_old, sigma = _batch()
    x_s = torch.stack([(1 - s) * a + s * n for a, n, s in zip(x0, noise, sigma)])
    torch.testing.assert_close(lf.noised(x0, noise, sigma), x_s)
    r, beta, scale = torch.tensor([0.9, 0.2], dtype=D), 0.5, 5.0
    positive, negative = beta * v + (1 - beta) * v_old, (1 + beta) * v_old - beta * v
    expected = (scale / beta) * (r * _error_by_hand(positive, x_s, x0, sigma)
                                 + (1 - r) * _error_by_hand(negative, x_s, x0, sigma))
    torch.testing.assert_close(lf.nft_loss(v, v_old, x_s, x0, sigma, r, beta, scale), expected)
    # all positive / all negative: one branch alone
    ones, zeros = torch.ones(2, dtype=D), torch.zeros(2, dtype=D)
    torch.testing.assert_close(lf.nft_loss(v, v_old, x_s, x0, sigma, ones, beta, scale),
                               (scale / beta) * _error_by_hand(positive, x_s, x0, sigma))
    torch.testing.assert_close(lf.nft_loss(v, v_old, x_s, x0, sigma, zeros, beta, scale),
                               (scale / beta) * _error_by_hand(negative, x_s, x0, sigma))
    with pytest.raises(ValueError, match="nft_beta must be > 0"):
        lf.nft_loss(v, v_old, x_s, x0, sigma, r, 0.0, scale)


def test_nft_gradient_at_the_old_policy_is_advantage_weighted_flow_matching_for_any_beta() -> None:
    """At v = v_old both branches share x0_hat and its weight, so dL/dv = scale (2r - 1) de/du at v_old, beta cancels;
    de/du = -2 s (x0_hat - x0) / (n w) (the weight w is held fixed)."""
    x0, noise, _, v_old, sigma = _batch()
    x_s = lf.noised(x0, noise, sigma)
    r = torch.tensor([0.9, 0.2], dtype=D)
    diff = (x_s - sigma.view(-1, 1, 1, 1) * v_old) - x0
    n = diff[0].numel()
    weight = diff.abs().reshape(2, -1).mean(1).view(-1, 1, 1, 1)
    expected = 5.0 * (2 * r - 1).view(-1, 1, 1, 1) * (-2 * sigma.view(-1, 1, 1, 1) * diff / (n * weight))
    for beta in (1.0, 0.1, 1e-4):
        v = v_old.clone().requires_grad_(True)
        lf.nft_loss(v, v_old, x_s, x0, sigma, r, beta, 5.0).sum().backward()
        torch.testing.assert_close(v.grad, expected, rtol=1e-6, atol=1e-9)


def test_nft_loss_as_beta_goes_to_zero_keeps_a_finite_gradient() -> None:
    x0, noise, v, v_old, sigma = _batch()
    x_s = lf.noised(x0, noise, sigma)
    r = torch.tensor([0.7, 0.4], dtype=D)
    grads = []
    for beta in (1e-3, 1e-5):
        velocity = v.clone().requires_grad_(True)
        lf.nft_loss(velocity, v_old, x_s, x0, sigma, r, beta, 5.0).sum().backward()
        grads.append(velocity.grad)
    assert torch.isfinite(grads[1]).all()
    assert (grads[0] - grads[1]).norm() < 2e-2 * grads[1].norm()


def test_optimality_probability() -> None:
    a = torch.tensor([-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0])
    assert lf.optimality_probability(a, 5.0).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_awm_loss_by_hand_and_its_gradient_sign() -> None:
    _, noise, v, _, sigma = _batch()
    target = noise
    advantages = torch.tensor([0.6, -0.4], dtype=D)
    squared = ((v - target) ** 2).reshape(2, -1).mean(1)
    p, eps = 0.25, 1e-10
    expected = advantages * sigma * ((squared + eps) ** p - eps**p) / p
    torch.testing.assert_close(lf.awm_loss(v, target, sigma, advantages, p), expected)
    torch.testing.assert_close(lf.awm_loss(v, target, sigma, advantages, 1.0), advantages * sigma * squared)
    velocity = v.clone().requires_grad_(True)
    lf.awm_loss(velocity, target, sigma, advantages, p).sum().backward()
    step = velocity - 1e-3 * velocity.grad  # descent
    after = ((step - target) ** 2).reshape(2, -1).mean(1)
    assert after[0] < squared[0] and after[1] > squared[1]  # positive advantage: toward the target; negative: away


def test_decay_schedules_and_the_soft_update() -> None:
    assert [lf.decay("linear_to_0_5", i) for i in (0, 100, 500, 2000)] == pytest.approx([0.0, 0.1, 0.5, 0.5])
    assert [lf.decay("delayed_linear_to_0_999", i) for i in (74, 75, 95, 10_000)] == pytest.approx([0, 0, 0.15, 0.999])
    assert [lf.decay("linear_to_0_3", i) for i in (0, 200, 400)] == pytest.approx([0.0, 0.2, 0.3])
    assert lf.decay("none", 10**6) == 0.0
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    copy = Ema({"w": weight}, 0.0)
    with torch.no_grad():
        weight.copy_(torch.tensor([3.0, 6.0]))
    copy.update(0.25)  # theta_old <- 0.25 theta_old + 0.75 theta
    torch.testing.assert_close(copy.shadow["w"], torch.tensor([2.5, 5.0]))
    with pytest.raises(ValueError, match="not a valid DecaySchedule"):
        lf.decay("cosine", 3)


def test_step_draws_per_sample_and_stratified() -> None:
    generator = torch.Generator().manual_seed(3)
    steps = lf.per_sample_steps(64, 10, 0.99, generator)
    assert steps.shape == (64, 9)  # int(10 * 0.99): one step of ten left out per sample, sigma = 1 included
    assert all(len(set(row.tolist())) == 9 for row in steps) and len({tuple(row.tolist()) for row in steps}) > 1
    assert set(steps.flatten().tolist()) == set(range(10))
    strata = lf.stratified_steps(5, 14, 6, 1, 0.9, generator)  # AWM's official 14 steps: [1,2) [2,4) ... [10,12)
    assert strata.shape == (5, 6) and (strata == strata[0]).all()
    for pick, (lo, hi) in zip(strata[0].tolist(), [(1, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]):
        assert lo <= pick < hi
    assert lf.stratified_steps(2, 4, 6, 1, 0.9, generator).shape == (2, 2)  # no more draws than steps in range


class _Recorder:
    def __init__(self, parameter: torch.nn.Parameter) -> None:
        self.parameter, self.steps = parameter, 0

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> StepReport:
        self.steps += 1
        self.parameter.grad = None
        return StepReport(1.0)


@pytest.mark.parametrize("objective", ["nft", "awm"])
def test_update_on_samples_counts_and_minibatches(objective: str) -> None:
    scale = torch.nn.Parameter(torch.ones(()))
    sigmas = torch.linspace(1, 0, 9)

    def model_fn(x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return scale * x * sigmas[step].view(-1, 1)

    cfg = LossConfig(objective=objective, timesteps="stratified" if objective == "awm" else "per_sample")
    cfg.check()
    samples = torch.randn(10, 2)
    points = draw_training_points(samples, 8, cfg, torch.Generator().manual_seed(0))
    draws = 7 if objective == "nft" else 6  # int(8 * 0.99); strata of steps 1 .. int(8 * 0.99) = 7
    assert isinstance(points, TrainingPoints) and points.steps.shape == (10, draws) and points.noise.shape == (10, draws, 2)
    learner = _Recorder(scale)
    update = update_on_samples(model_fn, sigmas, samples, torch.zeros(10, dtype=torch.long), torch.randn(10), points,
                               learner, cfg, 5.0, UpdateConfig(inner_epochs=2, parents_per_batch=4, grad_accum=1),
                               anchor_velocity=torch.randn(10, draws, 2))
    assert update.stats["training_nfe"] == 2 * 10 * draws  # samples x draws, per inner epoch
    assert update.stats["optimizer_steps"] == learner.steps == 2 * 3  # ceil(10 / 4) minibatches, twice
    assert update.skipped_steps == 0 and update.stats["trained_edges"] == 10 * draws


def test_contradictions_are_refused(tmp_path: Path) -> None:
    values = tiny_values(tmp_path)
    for overrides, message in [
        (["loss.nft_beta=0.1"], "belongs to loss.objective=nft"),
        (["method=diffusion_nft", "loss.awm_power=1"], "belongs to loss.objective=awm"),
        (["method=awm", "loss.ratio_norm=true"], "belongs to loss.objective=clipped"),
        (["loss.timesteps=stratified"], "only loss.objective=nft or awm"),
        (["tree.schedule=ode"], "tree.schedule=ode samples deterministic trajectories"),
        (["method=diffusion_nft", "advantage.per_depth_norm=true"], "advantage.per_depth_norm shapes edge advantages"),
        (["method=diffusion_nft", "train.fsdp=true", "train.ema=0"], "keeps a slow copy of the weights"),
        (["method=diffusion_nft", "loss.old_policy_decay=fast"], "loss.old_policy_decay is 'fast'; use one of none"),
    ]:
        with pytest.raises(ConfigError) as error:
            resolve_config(values, overrides)
        assert message in str(error.value) and "\n" not in str(error.value), overrides


FAMILY_MODELS: dict[str, dict[str, Any]] = {
    "sd3": {"height": 16, "width": 24, "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH},
    "flux": {"height": 16, "width": 24, "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH},
    "qwenimage": {"height": 32, "width": 48, "max_sequence_length": 256},
    "flux2": {"height": 16, "width": 24, "max_sequence_length": 48},
    "zimage": {"height": 16, "width": 24, "max_sequence_length": 48},
    "wan": {"height": 16, "width": 32, "max_sequence_length": 16, "num_frames": 5},
    "sana": {"height": 32, "width": 64, "max_sequence_length": 48},
    "ltx2": {"height": 32, "width": 64, "max_sequence_length": 16, "num_frames": 5},
    "hunyuanvideo15": {"height": 16, "width": 32, "max_sequence_length": 16, "num_frames": 5},
}


def _family_values(tmp_path: Path, family: str, **train_options: Any) -> dict[str, Any]:
    values = tiny_values(tmp_path, **{"iterations": 2, "eval_every": 0, "eval_at_start": False, "ema": 0.0, **train_options})
    values["model"] = {"path": str(tiny_pipeline(family)), "dtype": "fp32", "device": "cpu", "lora": {"rank": 4, "alpha": 4},
                       **FAMILY_MODELS[family]}
    values.pop("tree")
    values["sampling"] = {"steps": 4, "guidance_scale": 1.0}
    return values


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_one_nft_trainer_iteration_per_family(tmp_path: Path, family: str) -> None:
    values = _family_values(tmp_path, family, iterations=1)
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}", "method=diffusion_nft", "tree.trees=2"]))
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    leaves = 2 * 2  # prompts x trees (one leaf per ODE trajectory)
    assert record["rollout_nfe"] == leaves * 4 and record["training_nfe"] == leaves * 3  # int(4 * 0.99) steps each
    assert record["optimizer_steps"] >= 1 and record["grad_norm"] > 0 and (folder / "final").exists()


@pytest.mark.parametrize("method", ["diffusion_nft", "awm"])
def test_likelihood_free_runs_resume_exactly_with_the_slow_copy(tmp_path: Path, method: str) -> None:
    """Tree-fed (the leaves of k2 w2 trees): 3 iterations straight equal 2 + a resumed third, weights and anchor."""
    from safetensors.torch import load_file

    values = _family_values(tmp_path, "sd3", iterations=3, checkpoint_every=1)
    extra = [f"method={method}", "tree.schedule=tree", "tree.k=2", "tree.window=2", "tree.window_placement=fixed",
             "sampling.noise_level=0.7"]
    straight = tmp_path / "straight"
    train(resolve_config(values, [*extra, f"output_dir={straight}"]))
    split = tmp_path / "split"
    train(resolve_config(values, [*extra, f"output_dir={split}", "train.iterations=2"]))
    from treegrpo.trainer.launch import train as launch_train

    launch_train(resolve_config(values, [*extra, f"output_dir={split}"]), resume=str(split))
    for name in ("trained", "anchor"):
        a = load_file(str(straight / "checkpoints" / "step-000003" / f"{name}.safetensors"))
        b = load_file(str(split / "checkpoints" / "step-000003" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state = json.loads((straight / "checkpoints" / "step-000003" / "state.json").read_text())
    assert state["optimizer_steps"] >= 3


def test_ddim_families_are_refused(tmp_path: Path) -> None:
    values = tiny_values(tmp_path)
    values["model"] = {"path": str(tiny_pipeline("sd")), "dtype": "fp32", "device": "cpu", "height": 16, "width": 16}
    values.pop("tree")
    with pytest.raises(ConfigError, match="re-noises samples along a flow-matching path"):
        train(resolve_config(values, [f"output_dir={tmp_path / 'run'}", "method=diffusion_nft"]))


@pytest.mark.parametrize("objective", ["nft", "awm"])
def test_an_unscored_sample_gets_no_gradient(objective: str) -> None:
    """A leaf no reward scored (weight 0) must not train: at advantage 0 NFT's loss still pulls toward v_old.
    Each sample has its own parameter, so the gradient says exactly which samples were trained on."""
    scale = torch.nn.Parameter(torch.ones(10))
    sigmas = torch.linspace(1, 0, 9)

    def model_fn(x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return scale[cond].view(-1, 1) * x * sigmas[step].view(-1, 1)

    class Accumulator(_Recorder):
        def step(self) -> StepReport:
            self.steps += 1
            return StepReport(1.0)  # keep the gradient for the test to read

    cfg = LossConfig(objective=objective)
    cfg.check()
    samples = torch.randn(10, 2)
    points = draw_training_points(samples, 8, cfg, torch.Generator().manual_seed(0))
    weight = torch.ones(10)
    weight[[3, 7]] = 0.0
    advantages = torch.zeros(10) if objective == "nft" else torch.linspace(-1, 1, 10) + 0.05  # AWM: 0 trains nothing
    update_on_samples(model_fn, sigmas, samples, torch.arange(10), advantages, points, Accumulator(scale), cfg,
                      5.0, UpdateConfig(parents_per_batch=4, grad_accum=1),
                      anchor_velocity=torch.randn(10, points.draws, 2), sample_weight=weight)
    assert scale.grad is not None
    trained = scale.grad != 0
    assert trained.tolist() == (weight > 0).tolist(), scale.grad
