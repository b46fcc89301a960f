"""Advantages: group-normalised leaf scores, backed up the tree into one advantage per edge.

1. Leaf advantage ``A = (S - mean) / (std + eps)`` over all leaves of all trees of a prompt
   (population std; ``std_scope="global"`` divides by the std over every leaf instead), clamped to
   ``[-clip, clip]``. Guard: a group whose score spread is below ``min_group_std`` gets zero
   advantage; without it a tree whose leaves collapse onto one image turns noise into full-size
   advantages (docs/ARCHITECTURE.md, "the zero-spread guard").
2. Backup, deepest level first: the edge into node u carries a weighted mean of u's child-edge
   advantages; weights are uniform (``beta = 0``, the official code) or ``softmax(beta * log pi_old)``
   over siblings (``beta = 1`` is the paper's probability-weighted rule). One child passes through.
3. Optional: a leave-one-out baseline per node (``baseline="siblings"``), BranchGRPO-style
   normalisation per (prompt group, depth), one scale per depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from treegrpo.choices import Choice


class StdScope(Choice):
    """Leaf advantages divide by the std of their prompt group, or by the std over every leaf."""

    group = "group"
    global_ = "global"


@dataclass
class LeafAdvantages:
    advantages: torch.Tensor  # [L]
    group_mean: torch.Tensor  # [G]
    group_std: torch.Tensor  # [G]
    guarded: torch.Tensor  # [G] bool: group zeroed by the spread guard
    group_index: torch.Tensor  # [L] dense group id of each leaf
    num_groups: int
    scored: torch.Tensor  # [L] bool: the leaf has a finite score (a failed remote judge gives NaN: not scored)

    @property
    def leaf_guarded(self) -> torch.Tensor:
        """[L] bool: the leaf's group was zeroed by the guard."""
        return self.guarded[self.group_index]

    @property
    def unscored(self) -> int:
        """Leaves without a finite score: left out of their group's statistics and of training."""
        return int((~self.scored).sum())

    @property
    def guard_fraction(self) -> float:
        """Fraction of prompt groups whose advantages the zero-spread guard set to zero."""
        return float(self.guarded.float().mean()) if self.num_groups else 0.0


def group_stats(
    values: torch.Tensor, groups: torch.Tensor, num_groups: int, valid: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and population std of ``values`` (``groups``: dense ids ``0 .. num_groups - 1``),
    over the entries where ``valid`` is true (all when ``None``); a group without any is mean 0, std 0."""
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    weight = valid.to(values.dtype)
    filled = torch.where(valid, values, torch.zeros_like(values))
    count = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, groups, weight)
    total = torch.zeros_like(count).index_add_(0, groups, filled)
    mean = total / count.clamp_min(1)
    sq = torch.zeros_like(count).index_add_(0, groups, weight * (filled - mean[groups]) ** 2)
    return mean, (sq / count.clamp_min(1)).sqrt()


def normalize_leaf_scores(
    scores: torch.Tensor,
    groups: torch.Tensor,
    *,
    clip: float = 5.0,
    eps: float = 1e-8,
    std_scope: StdScope = StdScope.group,
    min_group_std: float = 1e-3,
    std_floor: float = 0.0,
) -> LeafAdvantages:
    """Group-normalised, clamped leaf advantages with the zero-spread guard.

    ``groups`` are integer prompt-group ids (need not be contiguous); all leaves sharing an id are
    normalised together. A non-finite score means "not scored" (a remote judge that failed): the leaf
    is left out of its group's mean and std and gets advantage 0; a group with fewer than two scored
    leaves has no spread and is guarded.
    """
    std_scope = StdScope(std_scope)  # a bad value raises ValueError
    scores = scores.to(torch.float32)
    scored = torch.isfinite(scores)
    _, dense = torch.unique(groups, return_inverse=True)
    num_groups = int(dense.max()) + 1 if dense.numel() else 0
    mean, std = group_stats(scores, dense, num_groups, scored)
    if std_scope is StdScope.group:
        scale = std[dense]
    else:
        scale = scores[scored].std(unbiased=False).expand_as(scores) if bool(scored.any()) else torch.zeros_like(scores)
    scale = scale.clamp_min(std_floor)
    advantages = ((scores - mean[dense]) / (scale + eps)).clamp(-clip, clip)
    guarded = std < min_group_std
    advantages = torch.where(guarded[dense] | ~scored, torch.zeros_like(advantages), advantages)
    return LeafAdvantages(advantages, mean, std, guarded, dense, num_groups, scored)


def component_normalized_scores(
    components: Mapping[str, torch.Tensor], weights: Mapping[str, float], groups: torch.Tensor, *,
    min_group_std: float = 1e-3,
) -> torch.Tensor:
    """``sum_j w_j z_j`` with ``z_j`` reward component ``j`` normalised within each prompt group.

    A component whose spread in a group is below ``min_group_std`` contributes 0 there (the
    zero-spread guard per component: a reward every leaf of the group agrees on says nothing).
    """
    total = torch.zeros(groups.shape[0], dtype=torch.float32, device=groups.device)
    for name, weight in weights.items():
        normalised = normalize_leaf_scores(components[name].to(torch.float32), groups, clip=float("inf"),
                                           min_group_std=min_group_std)
        total += float(weight) * normalised.advantages
    return total


def _sibling_softmax(logits: torch.Tensor, parent: torch.Tensor, num_parents: int) -> torch.Tensor:
    """Softmax of ``logits`` among edges that share a parent."""
    peak = torch.full((num_parents,), float("-inf"), device=logits.device).scatter_reduce(
        0, parent, logits, reduce="amax"
    )
    weights = torch.exp(logits - peak[parent])
    total = torch.zeros(num_parents, device=logits.device).index_add_(0, parent, weights)
    return weights / total[parent]


def backup_edge_advantages(
    node_parent: torch.Tensor,
    node_depth: torch.Tensor,
    edge_child: torch.Tensor,
    edge_log_prob: torch.Tensor,
    leaf_node: torch.Tensor,
    leaf_advantages: torch.Tensor,
    *,
    beta: float = 0.0,
    leaf_scored: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Advantage of every edge (indexed like ``edge_child``), backed up from the leaves.

    Processes depths from deepest to shallowest, so each node's value is final before it is used.
    Leaves where ``leaf_scored`` is false are left out of their ancestors' means (the weights of the
    scored siblings are renormalised); an edge with no scored leaf below it gets 0.
    """
    num_nodes = node_parent.shape[0]
    value = torch.full((num_nodes,), float("nan"), device=leaf_advantages.device)
    scored = torch.ones_like(leaf_advantages, dtype=torch.bool) if leaf_scored is None else leaf_scored
    value[leaf_node] = torch.where(scored, leaf_advantages.to(torch.float32), torch.full_like(value[leaf_node], float("nan")))
    reached = torch.zeros(num_nodes, dtype=torch.bool, device=value.device)
    reached[leaf_node] = True
    edge_parent = node_parent[edge_child]
    child_depth = node_depth[edge_child]
    for depth in range(int(child_depth.max()) if edge_child.numel() else 0, 0, -1):
        level = child_depth == depth
        child, parent = edge_child[level], edge_parent[level]
        _, local_parent = torch.unique(parent, return_inverse=True)
        num_local = int(local_parent.max()) + 1
        logits = beta * edge_log_prob[level].to(torch.float32)
        child_value = value[child]
        valid = ~torch.isnan(child_value)
        weights = torch.where(valid, _sibling_softmax(logits, local_parent, num_local), torch.zeros_like(child_value))
        total = torch.zeros(num_local, device=value.device).index_add_(0, local_parent, weights)
        weighted = torch.zeros(num_local, device=value.device).index_add_(
            0, local_parent, weights * torch.nan_to_num(child_value))
        first = torch.zeros(num_local, dtype=torch.long, device=value.device).scatter_(0, local_parent, parent)
        value[first] = torch.where(total > 0, weighted / total.clamp_min(1e-30), torch.full_like(total, float("nan")))
        below = torch.zeros(num_local, device=value.device).index_add_(0, local_parent, reached[child].float())
        reached[first] = below > 0
    if not bool(reached[edge_child].all()):
        raise RuntimeError("some edges have no leaf below them; the rollout's tree is inconsistent")
    return torch.nan_to_num(value[edge_child], nan=0.0)


def sibling_baseline(edge_advantages: torch.Tensor, edge_parent: torch.Tensor) -> torch.Tensor:
    """Each edge's advantage minus the mean of its siblings' (the other edges from its parent node).

    The leave-one-out baseline per node: what every sibling shares (the noise and branches above the
    node) cancels. An edge without siblings has nothing to be compared with and gets 0.
    """
    if not edge_advantages.numel():
        return edge_advantages
    _, local = torch.unique(edge_parent, return_inverse=True)
    parents = int(local.max()) + 1
    total = torch.zeros(parents, dtype=edge_advantages.dtype, device=edge_advantages.device)
    total.index_add_(0, local, edge_advantages)
    count = torch.zeros_like(total).index_add_(0, local, torch.ones_like(edge_advantages))
    others = count[local] - 1
    others_mean = (total[local] - edge_advantages) / others.clamp_min(1)
    return torch.where(others > 0, edge_advantages - others_mean, torch.zeros_like(edge_advantages))


def normalize_per_depth(
    edge_advantages: torch.Tensor,
    edge_depth: torch.Tensor,
    edge_group: torch.Tensor,
    *,
    eps: float = 1e-8,
) -> torch.Tensor:
    """BranchGRPO's depth-wise normalisation: zero mean, unit std per (prompt group, depth)."""
    key = edge_group.long() * (int(edge_depth.max()) + 1) + edge_depth.long()
    _, dense = torch.unique(key, return_inverse=True)
    mean, std = group_stats(edge_advantages, dense, int(dense.max()) + 1)
    return (edge_advantages - mean[dense]) / (std[dense] + eps)


def equalize_depth_scale(edge_advantages: torch.Tensor, edge_depth: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each depth's edge advantages to root-mean-square 1 over all groups (signs and zeros kept).

    A backed-up advantage is a mean over the leaves below its edge, so edges near the root carry
    smaller advantages than edges into leaves; this gives every depth the same scale.
    """
    _, dense = torch.unique(edge_depth, return_inverse=True)
    depths = int(dense.max()) + 1 if dense.numel() else 0
    square = torch.zeros(depths, dtype=edge_advantages.dtype, device=edge_advantages.device)
    square.index_add_(0, dense, edge_advantages**2)
    count = torch.zeros_like(square).index_add_(0, dense, torch.ones_like(edge_advantages))
    rms = (square / count.clamp_min(1)).sqrt()
    return edge_advantages / (rms[dense] + eps)
