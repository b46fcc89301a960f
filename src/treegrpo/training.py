"""The training pass: re-score trained edges under the current policy, one forward per parent.

A parent with k children is evaluated once; its one mean scores all k child edges. Minibatches
are sets of parents (all edges of a parent stay together, so per-node aggregation is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from treegrpo.loss import LossConfig, LossOutput, gaussian_mean_kl, policy_loss
from treegrpo.models.base import ModelFn
from treegrpo.rollout import TreeRollout
from treegrpo.sampling import StepOutput, Stepper


@dataclass
class Minibatch:
    """Parents evaluated together and the trained edges they score."""

    parent_slots: torch.Tensor  # [P_b] rows of the rollout's parent arrays
    edge_ids: torch.Tensor  # [E_b] rows of the rollout's edge arrays
    edge_local_parent: torch.Tensor  # [E_b] position of each edge's parent within parent_slots


def make_minibatches(
    rollout: TreeRollout,
    edge_mask: torch.Tensor,
    parents_per_batch: int,
    generator: torch.Generator | None = None,
) -> list[Minibatch]:
    """Shuffle the parents that have at least one selected edge and cut them into minibatches."""
    if parents_per_batch < 1:
        raise ValueError(f"parents_per_batch must be >= 1, got {parents_per_batch}")
    slots = torch.unique(rollout.edge_parent_slot[edge_mask])
    order = slots[torch.randperm(slots.numel(), generator=generator).to(slots.device)]
    batches = []
    for start in range(0, order.numel(), parents_per_batch):
        chosen = order[start : start + parents_per_batch]
        position = torch.full((rollout.num_parents,), -1, dtype=torch.long, device=slots.device)
        position[chosen] = torch.arange(chosen.numel(), device=slots.device)
        edges = torch.nonzero(edge_mask & (position[rollout.edge_parent_slot] >= 0)).squeeze(1)
        batches.append(Minibatch(chosen, edges, position[rollout.edge_parent_slot[edges]]))
    return batches


def rescore_edges(
    model_fn: ModelFn, stepper: Stepper, rollout: TreeRollout, batch: Minibatch
) -> StepOutput:
    """Log-prob (and mean, std) of each edge of ``batch`` under ``model_fn``: one forward per parent."""
    slots = batch.parent_slots
    latents = rollout.parent_latents[slots]
    steps = rollout.parent_step[slots]
    output = model_fn(latents, steps, rollout.parent_cond[slots]).to(torch.float32)
    local = batch.edge_local_parent
    return stepper.step(
        output[local], latents[local], steps[local], True, prev_sample=rollout.child_latents[batch.edge_ids]
    )


def minibatch_loss(
    model_fn: ModelFn,
    stepper: Stepper,
    rollout: TreeRollout,
    batch: Minibatch,
    edge_advantages: torch.Tensor,
    cfg: LossConfig,
    *,
    reference_fn: ModelFn | None = None,
) -> LossOutput:
    """Clipped objective of one minibatch (differentiable w.r.t. the model behind ``model_fn``)."""
    scored = rescore_edges(model_fn, stepper, rollout, batch)
    kl = None
    if reference_fn is not None and cfg.kl_beta > 0:
        with torch.no_grad():
            reference = rescore_edges(reference_fn, stepper, rollout, batch)
        kl = gaussian_mean_kl(scored.mean, reference.mean, scored.std)
    return policy_loss(
        scored.log_prob,
        rollout.structure.edge_log_prob[batch.edge_ids],
        edge_advantages[batch.edge_ids],
        batch.edge_local_parent,
        cfg,
        kl=kl,
    )
