"""One GRPO-family iteration, model- and method-agnostic: plan -> trees -> scores -> advantages -> update.

The trainer (and the 2-D toy) call these in order; everything method-specific comes from a
:class:`~treegrpo.engine.methods.MethodConfig`, everything model-specific from a ``ModelFn`` and a
``Stepper``. A :class:`Learner` hides how gradients are applied (plain torch, or accelerate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from treegrpo.engine.methods import AdvantageConfig, Baseline
from treegrpo.engine.minibatches import make_minibatches, minibatch_loss
from treegrpo.engine.rollout import TreeRollout, TreeStructure
from treegrpo.math.advantages import (
    LeafAdvantages,
    backup_edge_advantages,
    equalize_depth_scale,
    normalize_leaf_scores,
    normalize_per_depth,
    sibling_baseline,
)
from treegrpo.math.likelihood_free import (
    TimestepSampling, awm_loss, nft_loss, noised, optimality_probability, per_sample_steps, stratified_steps, velocity_kl,
)
from treegrpo.math.loss import LossConfig, Objective
from treegrpo.math.sampling import Stepper
from treegrpo.models.base import ModelFn


@dataclass
class EdgeAdvantages:
    """Per trained edge advantages ``edge [E]`` and the leaf normalisation they were backed up from."""

    edge: torch.Tensor  # [E]
    leaf: LeafAdvantages


def compute_advantages(structure: TreeStructure, leaf_scores: torch.Tensor, cfg: AdvantageConfig) -> EdgeAdvantages:
    """Leaf scores -> advantages normalised within each prompt group -> backed-up edge advantages."""
    leaf = normalize_leaf_scores(
        leaf_scores, structure.leaf_group, clip=cfg.clip, std_scope=cfg.std_scope, min_group_std=cfg.min_group_std,
        std_floor=cfg.std_floor,
    )
    edge = backup_edge_advantages(
        structure.node_parent, structure.node_depth, structure.edge_child, structure.edge_log_prob,
        structure.leaf_node, leaf.advantages, beta=cfg.backup_beta, leaf_scored=leaf.scored,
    )
    if cfg.baseline == Baseline.siblings:
        edge = sibling_baseline(edge, structure.edge_parent)
    if cfg.per_depth_norm and edge.numel():
        edge = normalize_per_depth(edge, structure.edge_depth, structure.edge_group)
        tree_guarded = torch.zeros(structure.num_trees, dtype=torch.bool, device=edge.device)
        tree_guarded[structure.leaf_tree] = leaf.leaf_guarded
        edge = edge.masked_fill(tree_guarded[structure.edge_tree], 0.0)  # guarded groups stay at zero
    if cfg.depth_scale and edge.numel():
        edge = equalize_depth_scale(edge, structure.edge_depth)
    return EdgeAdvantages(edge, leaf)


def select_edges(
    structure: TreeStructure, edge_advantages: torch.Tensor, cfg: AdvantageConfig, kl_on: bool
) -> torch.Tensor:
    """Mask of the edges the update trains on (pruning; zero-advantage edges skipped unless KL is on)."""
    mask = torch.ones_like(edge_advantages, dtype=torch.bool)
    depth = structure.edge_depth
    for pruned in cfg.prune_depths:
        mask &= depth != pruned
    if cfg.prune_keep_fraction < 1 and depth.numel():
        deepest = depth == depth.max()
        magnitude = edge_advantages.abs()
        keep = max(1, round(cfg.prune_keep_fraction * int(deepest.sum())))
        threshold = magnitude[deepest].topk(keep).values.min()
        mask &= ~deepest | (magnitude >= threshold)
    if not kl_on:
        mask &= edge_advantages != 0
    return mask


@dataclass(frozen=True)
class StepReport:
    """One optimizer step: the gradient norm, whether the step was applied, and why not when it was skipped."""

    grad_norm: float
    applied: bool = True
    findings: tuple[str, ...] = ()


class Learner(Protocol):
    """Applies gradients: plain torch here, accelerate in the trainer."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> StepReport:
        """Clip, step the optimizer unless something is non-finite, zero grads; says what it did."""
        ...


@dataclass
class UpdateResult:
    """What an update did: averaged diagnostics and counters, the skipped optimizer steps and why."""

    stats: dict[str, float]
    skipped_steps: int = 0
    findings: list[str] = field(default_factory=list)


class TorchLearner:
    """A plain optimizer with gradient-norm clipping; a non-finite gradient norm skips the step."""

    def __init__(self, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float = 1.0):
        self.parameters = parameters
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm

    def backward(self, loss: torch.Tensor) -> None:
        """Plain autograd backward."""
        loss.backward()  # type: ignore[no-untyped-call]

    def step(self) -> StepReport:
        norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepReport(norm, applied, () if applied else (f"grad_norm: {norm}",))


@dataclass
class UpdateConfig:
    """How the trained edges are consumed (the ``train`` section's update keys)."""

    inner_epochs: int = 1  # passes over the edges of one rollout
    parents_per_batch: int | None = 16  # parents per forward (each scores all its children) ...
    grad_accum: int = 1  # minibatches per optimizer step (0 = all minibatches of a pass in one step)
    edges_per_batch: int | None = None  # ... or as many parents as reach this many trained edges


def update_policy(
    model_fn: ModelFn,
    stepper: Stepper,
    rollout: TreeRollout,
    edge_advantages: torch.Tensor,
    edge_mask: torch.Tensor,
    learner: Learner,
    loss_cfg: LossConfig,
    update_cfg: UpdateConfig,
    *,
    reference_fn: ModelFn | None = None,
    generator: torch.Generator | None = None,
    on_minibatch: Callable[[], None] | None = None,
) -> UpdateResult:
    """The clipped update over the selected edges: averaged diagnostics, training NFE, skipped steps and why."""
    totals: dict[str, float] = {}
    count = steps = nfe = skipped = 0
    findings: list[str] = []
    for _ in range(update_cfg.inner_epochs):
        batches = make_minibatches(rollout, edge_mask, update_cfg.parents_per_batch, generator,
                                   edges_per_batch=update_cfg.edges_per_batch)
        accum = update_cfg.grad_accum if update_cfg.grad_accum > 0 else max(1, len(batches))
        for i, batch in enumerate(batches):
            out = minibatch_loss(model_fn, stepper, rollout, batch, edge_advantages, loss_cfg, reference_fn=reference_fn)
            learner.backward(out.loss / accum)
            nfe += int(batch.parent_slots.numel())
            for key, value in out.stats.items():
                totals[key] = totals.get(key, 0.0) + value
            count += 1
            if (i + 1) % accum == 0 or i + 1 == len(batches):
                report = learner.step()
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + report.grad_norm
                steps += 1
                skipped += not report.applied
                findings.extend(report.findings)
            if on_minibatch is not None:
                on_minibatch()
    stats = {key: value / max(count, 1) for key, value in totals.items() if key != "grad_norm"}
    stats["grad_norm"] = totals.get("grad_norm", 0.0) / max(steps, 1)
    stats["optimizer_steps"] = float(steps)
    stats["training_nfe"] = float(nfe)
    stats["trained_edges"] = float(int(edge_mask.sum()))
    return UpdateResult(stats, skipped, findings)


# ----------------------------------------------------------------------------- likelihood-free objectives


@dataclass
class TrainingPoints:
    """Where each clean sample is re-noised: sampler step indices ``[N, D]`` and fresh noise ``[N, D, ...]``."""

    steps: torch.Tensor
    noise: torch.Tensor

    @property
    def draws(self) -> int:
        return int(self.steps.shape[1])


def draw_training_points(samples: torch.Tensor, num_steps: int, cfg: LossConfig,
                         generator: torch.Generator | None) -> TrainingPoints:
    """The (step, noise) pairs each of ``samples`` ``[N, ...]`` is trained at, as ``loss.timesteps`` says."""
    n = int(samples.shape[0])
    if cfg.timesteps == TimestepSampling.stratified:
        steps = stratified_steps(n, num_steps, cfg.timestep_draws, 1, cfg.timestep_fraction, generator)
    else:
        steps = per_sample_steps(n, num_steps, cfg.timestep_fraction, generator)
    noise = torch.randn((n, int(steps.shape[1]), *samples.shape[1:]), generator=generator, dtype=torch.float32)
    return TrainingPoints(steps.to(samples.device), noise.to(samples.device, samples.dtype))


@torch.no_grad()
def velocities_at(model_fn: ModelFn, sigmas: torch.Tensor, samples: torch.Tensor, cond_index: torch.Tensor,
                  points: TrainingPoints, batch: int) -> torch.Tensor:
    """A fixed policy's velocity at every training point (old policy, EMA, reference): ``[N, D, ...]``."""
    out = torch.empty_like(points.noise)
    for j in range(points.draws):
        for start in range(0, samples.shape[0], batch):
            rows = slice(start, start + batch)
            step = points.steps[rows, j]
            x_s = noised(samples[rows], points.noise[rows, j], sigmas.to(samples.device)[step])
            out[rows, j] = model_fn(x_s, step, cond_index[rows]).to(out.dtype)
    return out


def update_on_samples(
    model_fn: ModelFn,
    sigmas: torch.Tensor,
    samples: torch.Tensor,
    cond_index: torch.Tensor,
    advantages: torch.Tensor,
    points: TrainingPoints,
    learner: Learner,
    loss_cfg: LossConfig,
    advantage_clip: float,
    update_cfg: UpdateConfig,
    *,
    anchor_velocity: torch.Tensor | None = None,
    reference_velocity: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_weight: torch.Tensor | None = None,
) -> UpdateResult:
    """DiffusionNFT or AWM on clean ``samples`` ``[N, ...]`` (leaf latents) with their leaf ``advantages`` ``[N]``.

    Minibatches of ``update_cfg.parents_per_batch`` samples (or ``edges_per_batch`` training points);
    each minibatch's ``D`` training points are one forward each (gradients accumulated over them).
    ``anchor_velocity``: DiffusionNFT's ``v_old`` (required for nft) or AWM's EMA-KL target;
    ``reference_velocity``: the KL reference's (``loss.kl_beta``). Training NFE = samples x draws.
    ``sample_weight`` ``[N]`` scales each sample's loss (0 for a leaf no reward scored: its advantage says
    nothing, and NFT's loss at advantage 0 is not zero); minibatches keep their size on every process.
    """
    objective = loss_cfg.objective
    if objective == Objective.nft and anchor_velocity is None:
        raise ValueError("loss.objective=nft needs the old policy's velocity at every training point")
    n, draws = int(samples.shape[0]), points.draws
    per_batch = update_cfg.parents_per_batch or max(1, (update_cfg.edges_per_batch or draws) // draws)
    sigmas = sigmas.to(samples.device)
    totals: dict[str, float] = {}
    count = steps = nfe = skipped = 0
    findings: list[str] = []
    for _ in range(update_cfg.inner_epochs):
        order = torch.randperm(n, generator=generator).to(samples.device)
        batches = [order[i : i + per_batch] for i in range(0, n, per_batch)]
        accum = update_cfg.grad_accum if update_cfg.grad_accum > 0 else max(1, len(batches))
        for i, rows in enumerate(batches):
            for j in range(draws):
                step = points.steps[rows, j]
                sigma = sigmas[step]
                x0 = samples[rows]
                x_s = noised(x0, points.noise[rows, j], sigma)
                velocity = model_fn(x_s, step, cond_index[rows])
                if objective == Objective.nft:
                    assert anchor_velocity is not None
                    r = optimality_probability(advantages[rows], advantage_clip)
                    per_sample = nft_loss(velocity, anchor_velocity[rows, j], x_s, x0, sigma, r, loss_cfg.nft_beta,
                                          advantage_clip)
                else:
                    scaled = advantages[rows].clamp(-advantage_clip, advantage_clip) / advantage_clip
                    per_sample = awm_loss(velocity, points.noise[rows, j] - x0, sigma, scaled, loss_cfg.awm_power)
                stats = {"policy_loss": float(per_sample.detach().mean())}
                if reference_velocity is not None and loss_cfg.kl_beta > 0:
                    kl = velocity_kl(velocity, reference_velocity[rows, j])
                    per_sample = per_sample + loss_cfg.kl_beta * kl
                    stats["kl"] = float(kl.detach().mean())
                if objective == Objective.awm and anchor_velocity is not None and loss_cfg.ema_kl_beta > 0:
                    per_sample = per_sample + loss_cfg.ema_kl_beta * velocity_kl(velocity, anchor_velocity[rows, j])
                if sample_weight is not None:
                    per_sample = per_sample * sample_weight[rows]
                learner.backward(per_sample.mean() / (draws * accum))
                nfe += int(rows.numel())
                stats["advantage_mean"] = float(advantages[rows].mean())
                stats["advantage_abs_mean"] = float(advantages[rows].abs().mean())
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
            if (i + 1) % accum == 0 or i + 1 == len(batches):
                report = learner.step()
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + report.grad_norm
                steps += 1
                skipped += not report.applied
                findings.extend(report.findings)
    stats = {key: value / max(count, 1) for key, value in totals.items() if key != "grad_norm"}
    stats["grad_norm"] = totals.get("grad_norm", 0.0) / max(steps, 1)
    stats["optimizer_steps"] = float(steps)
    stats["training_nfe"] = float(nfe)
    stats["trained_edges"] = float(n * draws)
    return UpdateResult(stats, skipped, findings)
