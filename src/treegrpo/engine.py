"""One GRPO-family iteration, model- and method-agnostic: plan -> trees -> scores -> advantages -> update.

The trainer (and the 2-D toy) call these in order; everything method-specific comes from a
:class:`~treegrpo.methods.MethodConfig`, everything model-specific from a ``ModelFn`` and a
``Stepper``. A :class:`Learner` hides how gradients are applied (plain torch, or accelerate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from treegrpo.advantages import (
    LeafAdvantages,
    backup_edge_advantages,
    equalize_depth_scale,
    normalize_leaf_scores,
    normalize_per_depth,
)
from treegrpo.loss import LossConfig
from treegrpo.methods import AdvantageConfig
from treegrpo.models.base import ModelFn
from treegrpo.rollout import TreeRollout, TreeStructure
from treegrpo.sampling import Stepper
from treegrpo.training import make_minibatches, minibatch_loss


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
        structure.leaf_node, leaf.advantages, beta=cfg.backup_beta,
    )
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
