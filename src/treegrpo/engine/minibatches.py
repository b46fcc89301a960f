"""The training pass: re-score trained edges under the current policy, one forward per parent.

A parent with k children is evaluated once; its one mean scores all k child edges. Minibatches
are sets of parents (all edges of a parent stay together, so per-node aggregation is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from treegrpo.engine.rollout import TreeRollout
from treegrpo.math.loss import LossConfig, LossOutput, gaussian_mean_kl, guarded_log_ratio, policy_loss, step_weights
from treegrpo.math.sampling import StepOutput, Stepper
from treegrpo.models.base import ModelFn


@dataclass
class Minibatch:
    """Parents evaluated together and the trained edges they score."""

    parent_slots: torch.Tensor  # [P_b] rows of the rollout's parent arrays
    edge_ids: torch.Tensor  # [E_b] rows of the rollout's edge arrays
    edge_local_parent: torch.Tensor  # [E_b] position of each edge's parent within parent_slots


def make_minibatches(
    rollout: TreeRollout,
    edge_mask: torch.Tensor,
    parents_per_batch: int | None = 16,
    generator: torch.Generator | None = None,
    *,
    edges_per_batch: int | None = None,
) -> list[Minibatch]:
    """Shuffle the parents that have at least one selected edge and cut them into minibatches.

    A minibatch holds ``parents_per_batch`` parents, or with ``edges_per_batch`` as many parents
    as it takes to reach that many selected edges (a k-ary parent brings up to k, a flat one 1):
    then a tree and a flat method take the same number of optimizer steps per trained edge.
    """
    if (parents_per_batch is None) == (edges_per_batch is None):
        raise ValueError("give exactly one of parents_per_batch and edges_per_batch")
    size = parents_per_batch if parents_per_batch is not None else edges_per_batch
    if size is None or size < 1:
        raise ValueError(f"minibatch size must be >= 1, got {size}")
    slots = torch.unique(rollout.edge_parent_slot[edge_mask])
    order = slots[torch.randperm(slots.numel(), generator=generator).to(slots.device)]
    if edges_per_batch is None:
        groups = [order[start : start + size] for start in range(0, order.numel(), size)]
    else:
        edges_of = torch.zeros(rollout.num_parents, dtype=torch.long, device=slots.device)
        edges_of.index_add_(0, rollout.edge_parent_slot[edge_mask], torch.ones_like(rollout.edge_parent_slot[edge_mask]))
        groups, start, filled = [], 0, 0
        for i, count in enumerate(edges_of[order].tolist()):
            filled += count
            if filled >= size:
                groups.append(order[start : i + 1])
                start, filled = i + 1, 0
        if start < order.numel():
            groups.append(order[start:])
    batches = []
    for chosen in groups:
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
    old_log_prob = rollout.structure.edge_log_prob[batch.edge_ids]
    kl = log_ratio = edge_weight = None
    if reference_fn is not None and cfg.kl_beta > 0:
        with torch.no_grad():
            reference = rescore_edges(reference_fn, stepper, rollout, batch)
        kl = gaussian_mean_kl(scored.mean, reference.mean, scored.std)
    if cfg.ratio_norm:
        if rollout.parent_mean is None:
            raise ValueError("loss.ratio_norm needs the rollout's step means; grow it with rollout_trees(keep_means=True)")
        old_mean = rollout.parent_mean[batch.parent_slots][batch.edge_local_parent]
        log_ratio = guarded_log_ratio(scored.log_prob, old_log_prob, scored.mean, old_mean, scored.std)
    if cfg.step_reweight:
        sigmas = getattr(stepper, "sigmas", None)
        if sigmas is None:
            raise ValueError("loss.step_reweight needs a flow-matching stepper (sigmas); it has no meaning for DDIM")
        edge_weight = step_weights(sigmas)[rollout.edge_step[batch.edge_ids].to(sigmas.device)].to(scored.log_prob.device)
    return policy_loss(
        scored.log_prob,
        old_log_prob,
        edge_advantages[batch.edge_ids],
        batch.edge_local_parent,
        cfg,
        kl=kl,
        log_ratio=log_ratio,
        edge_weight=edge_weight,
    )
