"""Tree rollout: grow every tree of every prompt through a per-step plan, one batched call a step.

All trees start from their own initial noise x_T and advance in lock-step. At each step every
frontier node of every tree goes through the model together (in chunks of ``max_batch``), so the
rollout's NFE is exactly the number of (node, step) pairs that need a model output. Then, by the
step's kind:
- ODE: each node advances deterministically, in place;
- SDE: each node draws one stochastic child (a new node and a trained edge if the step is trained);
- BRANCH(k): each node draws k children from the one mean (k noises), k trained edges.

The result keeps, per trained edge, what the training pass needs to re-score it against a new
policy: the parent latents (stored once per parent), step, conditioning, child latents, old log-prob.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch

from treegrpo.math.plans import Plan, StepKind
from treegrpo.math.sampling import Stepper
from treegrpo.models.base import ModelFn


@dataclass(frozen=True)
class TreeStructure:
    """The shape of one rollout's trees, without latents: what advantages need and what processes exchange.

    Node ids run over the rollout; roots are nodes ``0 .. R-1`` (tree ``r`` has root ``r``). A
    trained edge is named by its child node (its parent is ``node_parent[child]``). ``node_group``
    is the prompt group of each node: leaf scores are normalised within a group.
    """

    node_parent: torch.Tensor  # [N] parent node id, -1 for roots
    node_depth: torch.Tensor  # [N] number of trained edges from the root
    node_tree: torch.Tensor  # [N]
    node_group: torch.Tensor  # [N] prompt group id
    edge_child: torch.Tensor  # [E] child node of each trained edge
    edge_log_prob: torch.Tensor  # [E] log pi_old of the child given the parent
    leaf_node: torch.Tensor  # [L] node of each final sample
    num_trees: int

    @property
    def num_nodes(self) -> int:
        return int(self.node_parent.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_child.shape[0])

    @property
    def edge_parent(self) -> torch.Tensor:
        """[E] parent node of each trained edge."""
        return self.node_parent[self.edge_child]

    @property
    def edge_depth(self) -> torch.Tensor:
        """[E] depth of the child node (1 for edges out of the root)."""
        return self.node_depth[self.edge_child]

    @property
    def edge_tree(self) -> torch.Tensor:
        return self.node_tree[self.edge_child]

    @property
    def edge_group(self) -> torch.Tensor:
        return self.node_group[self.edge_child]

    @property
    def leaf_tree(self) -> torch.Tensor:
        return self.node_tree[self.leaf_node]

    @property
    def leaf_group(self) -> torch.Tensor:
        return self.node_group[self.leaf_node]

    def to(self, device: torch.device | str) -> "TreeStructure":
        """A copy with every tensor on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "num_trees"})


@dataclass
class TreeRollout:
    """One rollout: its :class:`TreeStructure`, and the latents the training pass re-scores edges from.

    Per trained-edge *parent* (a node at a trained step) the parent latents are stored once;
    per trained edge, the child latents. ``node_cond`` is each node's conditioning row; in a
    single-process rollout it is also the prompt group (``structure.node_group``).
    """

    structure: TreeStructure
    node_cond: torch.Tensor  # [N] conditioning (prompt) row
    # trained-edge parents: one entry per (node, trained step) that produced children
    parent_latents: torch.Tensor  # [P, ...]
    parent_step: torch.Tensor  # [P]
    parent_cond: torch.Tensor  # [P]
    parent_node: torch.Tensor  # [P]
    edge_parent_slot: torch.Tensor  # [E] row of the parent_* arrays
    child_latents: torch.Tensor  # [E, ...]
    leaf_latents: torch.Tensor  # [L, ...]
    root_latents: torch.Tensor  # [R, ...]
    nfe: int = 0
    model_calls: int = 0
    parent_mean: torch.Tensor | None = None  # [P, ...] the old policy's step mean (``keep_means``)

    @property
    def num_parents(self) -> int:
        return int(self.parent_step.shape[0])

    @property
    def edge_step(self) -> torch.Tensor:
        """[E] denoising step of each trained edge."""
        return self.parent_step[self.edge_parent_slot]

    @property
    def leaf_cond(self) -> torch.Tensor:
        """[L] conditioning row of each final sample."""
        return self.node_cond[self.structure.leaf_node]

    def cpu(self) -> "TreeRollout":
        """A copy with every tensor on the CPU."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in moved.items()}
        moved["structure"] = self.structure.to("cpu")
        return TreeRollout(**moved)


def evaluate_in_chunks(
    model_fn: ModelFn,
    latents: torch.Tensor,
    step_index: torch.Tensor,
    cond_index: torch.Tensor,
    max_batch: int,
) -> tuple[torch.Tensor, int]:
    """Model outputs for all rows, ``max_batch`` rows per call; returns (outputs, number of calls)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    outputs = [
        model_fn(latents[i : i + max_batch], step_index[i : i + max_batch], cond_index[i : i + max_batch])
        for i in range(0, latents.shape[0], max_batch)
    ]
    return torch.cat(outputs).to(torch.float32), len(outputs)


class _TreeBuilder:
    """Accumulates nodes, parents and edges while the frontier advances."""

    def __init__(self, num_roots: int, root_cond: torch.Tensor) -> None:
        device = root_cond.device
        roots = torch.arange(num_roots, device=device)
        self.node_parent = [torch.full((num_roots,), -1, device=device)]
        self.node_depth = [torch.zeros(num_roots, dtype=torch.long, device=device)]
        self.node_tree = [roots]
        self.node_cond = [root_cond]
        self.num_nodes = num_roots
        self.parents: dict[str, list[torch.Tensor]] = {"latents": [], "step": [], "cond": [], "node": [], "mean": []}
        self.edges: dict[str, list[torch.Tensor]] = {"slot": [], "child": [], "latents": [], "log_prob": []}
        self.num_parents = 0

    def add_children(
        self,
        parent_node: torch.Tensor,
        parent_latents: torch.Tensor,
        parent_cond: torch.Tensor,
        step: int,
        k: int,
        child_latents: torch.Tensor,
        log_prob: torch.Tensor,
        mean: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Record ``k`` children of each parent (children ordered parent-major); returns child ids.

        ``mean`` (optional): the step mean of each parent, kept for GRPO-Guard's ratio normalisation.
        """
        n = parent_node.shape[0]
        device = parent_node.device
        slots = self.num_parents + torch.arange(n, device=device)
        self.parents["latents"].append(parent_latents)
        if mean is not None:
            self.parents["mean"].append(mean)
        self.parents["step"].append(torch.full((n,), step, device=device))
        self.parents["cond"].append(parent_cond)
        self.parents["node"].append(parent_node)
        self.num_parents += n

        children = self.num_nodes + torch.arange(n * k, device=device)
        parent_of_child = parent_node.repeat_interleave(k)
        depth = torch.cat(self.node_depth)
        tree = torch.cat(self.node_tree)
        self.node_parent.append(parent_of_child)
        self.node_depth.append(depth[parent_of_child] + 1)
        self.node_tree.append(tree[parent_of_child])
        self.node_cond.append(parent_cond.repeat_interleave(k))
        self.num_nodes += n * k

        self.edges["slot"].append(slots.repeat_interleave(k))
        self.edges["child"].append(children)
        self.edges["latents"].append(child_latents)
        self.edges["log_prob"].append(log_prob)
        return children

    def finish(self, frontier_node: torch.Tensor, frontier_latents: torch.Tensor, roots: torch.Tensor,
               nfe: int, calls: int, keep_means: bool = False) -> TreeRollout:
        def cat(items: list[torch.Tensor], empty_like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
            if items:
                return torch.cat(items)
            return empty_like.new_empty((0, *empty_like.shape[1:]), dtype=dtype or empty_like.dtype)

        index = roots.new_empty(0, dtype=torch.long)
        scalar = roots.new_empty(0, dtype=torch.float32)
        node_cond = torch.cat(self.node_cond)
        structure = TreeStructure(
            node_parent=torch.cat(self.node_parent),
            node_depth=torch.cat(self.node_depth),
            node_tree=torch.cat(self.node_tree),
            node_group=node_cond,
            edge_child=cat(self.edges["child"], index),
            edge_log_prob=cat(self.edges["log_prob"], scalar),
            leaf_node=frontier_node,
            num_trees=int(roots.shape[0]),
        )
        return TreeRollout(
            structure=structure,
            node_cond=node_cond,
            parent_latents=cat(self.parents["latents"], roots),
            parent_step=cat(self.parents["step"], index),
            parent_cond=cat(self.parents["cond"], index),
            parent_node=cat(self.parents["node"], index),
            edge_parent_slot=cat(self.edges["slot"], index),
            child_latents=cat(self.edges["latents"], roots),
            leaf_latents=frontier_latents,
            root_latents=roots,
            nfe=nfe,
            model_calls=calls,
            parent_mean=cat(self.parents["mean"], roots) if keep_means else None,
        )


@torch.no_grad()
def rollout_trees(
    model_fn: ModelFn,
    stepper: Stepper,
    plan: Plan,
    initial_noise: torch.Tensor,
    root_cond: torch.Tensor,
    *,
    max_batch: int = 64,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
    keep_means: bool = False,
    antithetic: bool = False,
) -> TreeRollout:
    """Grow one tree per row of ``initial_noise`` (conditioned on ``root_cond``) through ``plan``.

    ``on_step(step, frontier_size)`` is called after each step (progress bars); ``keep_means``
    stores each trained parent's step mean (``parent_mean``, for GRPO-Guard's ratio normalisation);
    ``antithetic`` mirrors the noise of a BRANCH step's children in pairs (:func:`mirror_siblings`).
    """
    if len(plan) != stepper.num_steps:
        raise ValueError(f"plan has {len(plan)} steps but the sampler has {stepper.num_steps}")
    if initial_noise.shape[0] != root_cond.shape[0]:
        raise ValueError("initial_noise and root_cond must have one row per tree")
    root_cond = root_cond.long()
    latents = initial_noise.to(torch.float32)
    cond = root_cond
    node = torch.arange(latents.shape[0], device=root_cond.device)
    builder = _TreeBuilder(latents.shape[0], root_cond)
    nfe = calls = 0

    for step, spec in enumerate(plan):
        step_index = torch.full((latents.shape[0],), step, device=latents.device, dtype=torch.long)
        output, n_calls = evaluate_in_chunks(model_fn, latents, step_index, cond, max_batch)
        nfe += latents.shape[0]
        calls += n_calls
        if spec.kind is StepKind.ODE:
            latents = stepper.step(output, latents, step_index, False).prev_sample
        else:
            k = spec.children
            repeat = torch.arange(latents.shape[0], device=latents.device).repeat_interleave(k)
            drawn = stepper.step(output[repeat], latents[repeat], step_index[repeat], True, generator=generator)
            if antithetic and k > 1:
                mirrored = mirror_siblings(drawn.prev_sample, drawn.mean, k)
                drawn = stepper.step(output[repeat], latents[repeat], step_index[repeat], True, prev_sample=mirrored)
            if spec.trained:
                mean = drawn.mean[::k] if keep_means else None  # children are parent-major: row i * k is parent i's
                node = builder.add_children(node, latents, cond, step, k, drawn.prev_sample, drawn.log_prob, mean)
            else:
                node = node[repeat]
            latents, cond = drawn.prev_sample, cond[repeat]
        if on_step is not None:
            on_step(step, int(latents.shape[0]))

    return builder.finish(node, latents, initial_noise.to(torch.float32), nfe, calls, keep_means)


def mirror_siblings(children: torch.Tensor, mean: torch.Tensor, k: int) -> torch.Tensor:
    """Antithetic siblings: of each parent's ``k`` children (parent-major rows), child ``2j + 1`` becomes
    ``2 mean - child 2j``, the same Gaussian draw mirrored through the step mean (an odd last child keeps
    its own draw).

    Each child is still a draw of the step's Gaussian, but within a pair the noise that is not
    correlated with the reward cancels in the policy gradient (antithetic variates).
    """
    grouped = children.reshape(-1, k, *children.shape[1:]).clone()
    means = mean.reshape(-1, k, *mean.shape[1:])
    pairs = k // 2
    grouped[:, 1 : 2 * pairs : 2] = 2 * means[:, 0 : 2 * pairs : 2] - grouped[:, 0 : 2 * pairs : 2]
    return grouped.reshape(children.shape)


def concat_rollouts(parts: Sequence[TreeRollout]) -> TreeRollout:
    """Rollouts of disjoint trees grown one after another, as one rollout of all their trees.

    Trees keep their order (part 0's first); roots stay nodes ``0 .. R-1`` and every other node
    follows, part by part, so node ids, parent slots and leaves of each part are renumbered.
    """
    if len(parts) == 1:
        return parts[0]
    total_roots = sum(part.structure.num_trees for part in parts)
    node_maps, tree_offset, other_offset, parent_offset = [], 0, total_roots, 0
    for part in parts:
        roots, nodes = part.structure.num_trees, part.structure.num_nodes
        ids = torch.arange(nodes, device=part.node_cond.device)
        node_maps.append(torch.where(ids < roots, ids + tree_offset, ids - roots + other_offset))
        tree_offset += roots
        other_offset += nodes - roots

    def nodes_in_order(values: list[torch.Tensor]) -> torch.Tensor:
        """Per-node arrays of the parts, placed at their new node ids."""
        out = values[0].new_empty((other_offset, *values[0].shape[1:]))
        for new_ids, value in zip(node_maps, values):
            out[new_ids] = value
        return out

    def renumber(old: torch.Tensor, node_map: torch.Tensor) -> torch.Tensor:
        return torch.where(old >= 0, node_map[old.clamp_min(0)], old)

    slots, trees_before = [], 0
    node_tree = []
    for part in parts:
        slots.append(part.edge_parent_slot + parent_offset)
        parent_offset += part.num_parents
        node_tree.append(part.structure.node_tree + trees_before)
        trees_before += part.structure.num_trees
    structure = TreeStructure(
        node_parent=nodes_in_order([renumber(p.structure.node_parent, m) for p, m in zip(parts, node_maps)]),
        node_depth=nodes_in_order([p.structure.node_depth for p in parts]),
        node_tree=nodes_in_order(node_tree),
        node_group=nodes_in_order([p.structure.node_group for p in parts]),
        edge_child=torch.cat([m[p.structure.edge_child] for p, m in zip(parts, node_maps)]),
        edge_log_prob=torch.cat([p.structure.edge_log_prob for p in parts]),
        leaf_node=torch.cat([m[p.structure.leaf_node] for p, m in zip(parts, node_maps)]),
        num_trees=total_roots,
    )
    return TreeRollout(
        structure=structure,
        node_cond=nodes_in_order([p.node_cond for p in parts]),
        parent_latents=torch.cat([p.parent_latents for p in parts]),
        parent_step=torch.cat([p.parent_step for p in parts]),
        parent_cond=torch.cat([p.parent_cond for p in parts]),
        parent_node=torch.cat([m[p.parent_node] for p, m in zip(parts, node_maps)]),
        edge_parent_slot=torch.cat(slots),
        child_latents=torch.cat([p.child_latents for p in parts]),
        leaf_latents=torch.cat([p.leaf_latents for p in parts]),
        root_latents=torch.cat([p.root_latents for p in parts]),
        nfe=sum(p.nfe for p in parts),
        model_calls=sum(p.model_calls for p in parts),
        parent_mean=None if any(p.parent_mean is None for p in parts) else torch.cat([p.parent_mean for p in parts]),  # type: ignore[misc]
    )
