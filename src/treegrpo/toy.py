"""A 2-D flow-matching task that runs the whole RL loop in seconds, with no diffusers model.

"Prompts" are class ids. Class ``c``'s data is a ring of ``modes`` Gaussians rotated by ``c``;
an MLP velocity field is pretrained on it by rectified flow (seconds on a CPU). The reward is the
(unnormalised) density of one target mode per class, so the pretrained policy earns about
``1 / modes`` and RL must move mass onto the target mode. Every method preset trains on it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from treegrpo.engine.methods import MethodConfig, plan_for_iteration, preset
from treegrpo.engine.rollout import TreeRollout, rollout_trees
from treegrpo.engine.update import (
    TorchLearner, UpdateConfig, compute_advantages, draw_training_points, select_edges, update_on_samples, update_policy,
    velocities_at,
)
from treegrpo.math.likelihood_free import decay
from treegrpo.math.plans import Plan
from treegrpo.math.sampling import FlowSchedule, Schedule
from treegrpo.models.base import ModelFn
from treegrpo.optim import Ema


@dataclass
class ToyTask:
    """Geometry of the toy data and reward."""

    num_classes: int = 4
    modes: int = 4
    radius: float = 2.0
    mode_std: float = 0.15
    reward_width: float = 0.5

    def mode_centers(self, cls: torch.Tensor) -> torch.Tensor:
        """[N, modes, 2] centres of the ring of class ``cls``."""
        base = torch.arange(self.modes, dtype=torch.float32) * (2 * math.pi / self.modes)
        angle = base[None, :] + cls.float()[:, None] * (math.pi / (self.modes * self.num_classes))
        return self.radius * torch.stack([angle.cos(), angle.sin()], dim=-1)

    def sample(self, cls: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        centers = self.mode_centers(cls)
        pick = torch.randint(self.modes, (cls.shape[0],), generator=generator)
        noise = torch.randn(cls.shape[0], 2, generator=generator) * self.mode_std
        return centers[torch.arange(cls.shape[0]), pick] + noise

    def reward(self, points: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Density of the target mode (mode 0) up to a constant: ``exp(-d^2 / 2 w^2)`` in [0, 1]."""
        target = self.mode_centers(cls)[:, 0]
        distance2 = ((points.to(torch.float32) - target) ** 2).sum(-1)
        return torch.exp(-distance2 / (2 * self.reward_width**2))


class ToyVelocity(nn.Module):
    """MLP velocity field v(x, sigma, class)."""

    def __init__(self, num_classes: int, hidden: int = 128, embed: int = 16):
        super().__init__()
        self.class_embed = nn.Embedding(num_classes, embed)
        self.net = nn.Sequential(
            nn.Linear(2 + 2 * 4 + embed, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(1, 5, dtype=torch.float32, device=x.device) * math.pi
        t = sigma.float()[:, None] * freqs
        features = torch.cat([x, t.sin(), t.cos(), self.class_embed(cls)], dim=-1)
        return self.net(features)


class ToyBackbone:
    """The toy as a :class:`~treegrpo.models.base.Backbone`: latents are 2-D points, decode is identity."""

    family = "toy"

    def __init__(self, task: ToyTask, denoiser: ToyVelocity, *, keep_reference: bool = False):
        self.task = task
        self.denoiser = denoiser
        self._reference = copy.deepcopy(denoiser).requires_grad_(False) if keep_reference else None

    def encode_prompts(self, prompts: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(list(prompts), dtype=torch.long)

    def schedule(self, num_steps: int) -> FlowSchedule:
        """Uniform sigmas from 1 to 0; the velocity network takes the sigma itself as its timestep."""
        sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
        return FlowSchedule(sigmas, sigmas[:-1])

    def initial_noise(self, num: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(num, 2, generator=generator)

    def model_fn(
        self, conditioning: torch.Tensor, guidance_scale: float, schedule: Schedule, *,
        denoiser: Callable[..., torch.Tensor] | None = None,
    ) -> ModelFn:
        """Velocity of ``denoiser`` (default: the trained network) at the schedule's sigma; no guidance."""
        net = self.denoiser if denoiser is None else denoiser
        sigmas = schedule.timesteps

        def fn(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
            return net(latents, sigmas[step_index], conditioning[cond_index])

        return fn

    def reference_denoiser(self) -> ToyVelocity:
        """The frozen copy of the starting network (``keep_reference=True``)."""
        if self._reference is None:
            raise RuntimeError("the toy backbone keeps a reference copy only with keep_reference=True")
        return self._reference

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def save_trained(self, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(weights if weights is not None else self.denoiser.state_dict(), str(folder / "toy_velocity.safetensors"))


def pretrain_toy(task: ToyTask, *, steps: int = 1500, batch: int = 512, lr: float = 3e-3, seed: int = 0) -> ToyVelocity:
    """Rectified-flow pretraining: x_s = (1 - s) x0 + s eps, target v = eps - x0 (seconds on CPU)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyVelocity(task.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        cls = torch.randint(task.num_classes, (batch,), generator=generator)
        x0 = task.sample(cls, generator)
        eps = torch.randn(batch, 2, generator=generator)
        sigma = torch.sigmoid(torch.randn(batch, generator=generator))  # logit-normal
        xs = (1 - sigma[:, None]) * x0 + sigma[:, None] * eps
        loss = ((model(xs, sigma, cls) - (eps - x0)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.requires_grad_(True)


@dataclass
class ToyRunConfig:
    method: str = "treegrpo"
    iterations: int = 60
    lr: float = 1e-3
    num_steps: int = 10
    noise_level: float = 0.7
    prompts_per_iteration: int = 8
    eval_samples: int = 512
    seed: int = 0
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    update: UpdateConfig = field(default_factory=lambda: UpdateConfig(inner_epochs=1, parents_per_batch=256, grad_accum=0))


@torch.no_grad()
def evaluate_toy(backbone: ToyBackbone, num_steps: int, samples: int, seed: int) -> float:
    """Mean reward of deterministic (ODE) samples from fresh noise, over all classes."""
    schedule = backbone.schedule(num_steps)
    stepper = schedule.stepper(0.0)
    generator = torch.Generator().manual_seed(10_000 + seed)
    cls = torch.arange(samples) % backbone.task.num_classes
    x = backbone.initial_noise(samples, generator)
    model = backbone.model_fn(cls, 1.0, schedule)
    for step in range(num_steps):
        index = torch.full((samples,), step, dtype=torch.long)
        x = stepper.step(model(x, index, torch.arange(samples)), x, index, False).prev_sample
    return float(backbone.task.reward(x, cls).mean())


@dataclass
class ToyStep:
    """What one toy iteration spent and how often the guard fired."""

    rollout_nfe: int
    training_nfe: int
    guard_fraction: float


class ToyRun:
    """One training run on the toy: policy, sampler, optimizer and RNG, advanced one plan at a time."""

    def __init__(self, task: ToyTask, method: MethodConfig, base: ToyVelocity | None, *, lr: float, seed: int,
                 num_steps: int, noise_level: float, prompts_per_iteration: int, update: UpdateConfig):
        self.task, self.method, self.seed = task, method, seed
        self.num_steps, self.prompts_per_iteration, self.update = num_steps, prompts_per_iteration, update
        self.kl_on = method.loss.kl_beta > 0
        torch.manual_seed(seed)
        denoiser = copy.deepcopy(base) if base is not None else pretrain_toy(task, seed=seed)
        self.backbone = ToyBackbone(task, denoiser, keep_reference=self.kl_on)
        self.schedule = self.backbone.schedule(num_steps)
        self.stepper = self.schedule.stepper(noise_level)
        optimizer = torch.optim.AdamW(self.backbone.trainable_parameters(), lr=lr, weight_decay=0.0)
        self.learner = TorchLearner(self.backbone.trainable_parameters(), optimizer, max_grad_norm=1.0)
        self.generator = torch.Generator().manual_seed(seed)
        named = dict(self.backbone.denoiser.named_parameters())
        self.anchor = Ema(named, 0.0) if method.loss.keeps_anchor else None
        """A likelihood-free objective's slow copy (DiffusionNFT's sampling policy, AWM's KL EMA)."""
        self.optimizer_steps = 0

    def plan(self, iteration: int) -> Plan:
        return plan_for_iteration(self.method.tree, self.num_steps, iteration, self.seed)

    def step(self, plan: Plan) -> ToyStep:
        """Rollout, score, advantages and update for one iteration following ``plan``."""
        backbone, generator = self.backbone, self.generator
        prompts = torch.randint(self.task.num_classes, (self.prompts_per_iteration,), generator=generator)
        root_cond = torch.arange(self.prompts_per_iteration).repeat_interleave(self.method.tree.trees)
        model_fn = backbone.model_fn(prompts, 1.0, self.schedule)
        loss = self.method.loss
        sampling = self.anchor.applied() if self.anchor is not None and loss.objective == "nft" else contextlib.nullcontext()
        with sampling:
            rollout = rollout_trees(model_fn, self.stepper, plan, backbone.initial_noise(root_cond.shape[0], generator),
                                    root_cond, max_batch=4096, generator=generator, keep_means=loss.ratio_norm,
                                    antithetic=self.method.tree.antithetic)
        scores = self.task.reward(backbone.decode(rollout.leaf_latents), prompts[rollout.leaf_cond])
        advantages = compute_advantages(rollout.structure, scores, self.method.advantage)
        if loss.objective.likelihood_free:
            stats = self._update_on_samples(model_fn, prompts, rollout, advantages.leaf.advantages)
            return ToyStep(rollout.nfe, int(stats["training_nfe"]), advantages.leaf.guard_fraction)
        mask = select_edges(rollout.structure, advantages.edge, self.method.advantage, self.kl_on)
        reference_fn = (
            backbone.model_fn(prompts, 1.0, self.schedule, denoiser=backbone.reference_denoiser()) if self.kl_on else None
        )
        update = update_policy(model_fn, self.stepper, rollout, advantages.edge, mask, self.learner, self.method.loss,
                               self.update, reference_fn=reference_fn, generator=generator)
        return ToyStep(rollout.nfe, int(update.stats["training_nfe"]), advantages.leaf.guard_fraction)

    def _update_on_samples(self, model_fn: ModelFn, prompts: torch.Tensor, rollout: TreeRollout,
                           leaf_advantages: torch.Tensor) -> dict[str, float]:
        """DiffusionNFT / AWM on the rollout's leaves (as the trainer's ``_update_on_samples``)."""
        loss, generator = self.method.loss, self.generator
        samples, cond = rollout.leaf_latents, rollout.leaf_cond
        points = draw_training_points(samples, self.num_steps, loss, generator)
        sigmas = self.schedule.sigmas
        anchor = reference = None
        if loss.objective == "nft" or loss.ema_kl_beta > 0:
            with self.anchor.applied() if self.anchor is not None else contextlib.nullcontext():
                anchor = velocities_at(model_fn, sigmas, samples, cond, points, 4096)
        if self.kl_on:
            reference_fn = self.backbone.model_fn(prompts, 1.0, self.schedule, denoiser=self.backbone.reference_denoiser())
            reference = velocities_at(reference_fn, sigmas, samples, cond, points, 4096)
        update = update_on_samples(model_fn, sigmas, samples, cond, leaf_advantages, points, self.learner, loss,
                                   self.method.advantage.clip, self.update, anchor_velocity=anchor,
                                   reference_velocity=reference, generator=generator)
        self.optimizer_steps += int(update.stats["optimizer_steps"])
        if self.anchor is not None:
            self.anchor.update(decay(loss.anchor_decay, self.optimizer_steps))
        return update.stats

    def evaluate(self, samples: int) -> float:
        return evaluate_toy(self.backbone, self.num_steps, samples, self.seed)


def train_toy(cfg: ToyRunConfig, task: ToyTask | None = None, base: ToyVelocity | None = None) -> dict[str, Any]:
    """Train a preset on the toy; returns the reward history and the engine's NFE counters."""
    run = ToyRun(task or ToyTask(), preset(cfg.method, **cfg.method_overrides), base, lr=cfg.lr, seed=cfg.seed,
                 num_steps=cfg.num_steps, noise_level=cfg.noise_level,
                 prompts_per_iteration=cfg.prompts_per_iteration, update=cfg.update)
    history: dict[str, Any] = {"reward": [run.evaluate(cfg.eval_samples)],
                               "rollout_nfe": [], "training_nfe": [], "guard_fraction": []}
    for iteration in range(cfg.iterations):
        step = run.step(run.plan(iteration))
        history["rollout_nfe"].append(step.rollout_nfe)
        history["training_nfe"].append(step.training_nfe)
        history["guard_fraction"].append(step.guard_fraction)
        history["reward"].append(run.evaluate(cfg.eval_samples))
    return history
