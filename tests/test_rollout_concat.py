"""Rollouts grown in chunks of trees and concatenated behave as one rollout of all the trees."""

from __future__ import annotations

import torch

from treegrpo.math import plans
from treegrpo.engine.update import compute_advantages
from treegrpo.engine.methods import AdvantageConfig
from treegrpo.engine.rollout import concat_rollouts, rollout_trees
from treegrpo.math.sampling import FlowMatchStepper
from treegrpo.engine.minibatches import make_minibatches, rescore_edges
from tests.test_rollout import LinearVelocity


def test_concatenated_chunks_form_one_forest_that_rescores_exactly() -> None:
    plan = plans.split_plan(6, 2, [1, 3])  # two branchings, depths 1 and 2
    model = LinearVelocity(prompts=3)
    stepper = FlowMatchStepper(torch.linspace(1, 0, 7), noise_level=0.7)
    root_cond = torch.tensor([0, 0, 1, 1, 2])  # chunks [0, 0] [1, 1, 2]: unequal sizes
    noise = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    parts = [rollout_trees(model, stepper, plan, noise[rows], root_cond[rows], generator=generator)
             for rows in (slice(0, 2), slice(2, 5))]
    whole = concat_rollouts(parts)
    s = whole.structure

    assert s.num_trees == 5 and s.num_nodes == sum(p.structure.num_nodes for p in parts)
    assert torch.equal(s.node_parent[:5], torch.full((5,), -1)) and torch.equal(s.node_tree[:5], torch.arange(5))
    assert torch.equal(whole.root_latents, noise)
    parent = s.edge_parent
    assert torch.equal(s.node_tree[parent], s.edge_tree) and torch.equal(s.node_depth[parent] + 1, s.edge_depth)
    assert torch.equal(whole.parent_node[whole.edge_parent_slot], parent)
    assert torch.equal(whole.node_cond[whole.parent_node], whole.parent_cond)
    assert torch.equal(s.node_group[s.leaf_node], root_cond[s.leaf_tree])
    assert torch.equal(whole.leaf_latents, torch.cat([p.leaf_latents for p in parts]))
    assert whole.nfe == sum(p.nfe for p in parts)

    # every edge re-scores to its stored log-prob: latents, slots and conditions line up
    everything = torch.ones(s.num_edges, dtype=torch.bool)
    for batch in make_minibatches(whole, everything, parents_per_batch=3):
        scored = rescore_edges(model, stepper, whole, batch)
        assert torch.allclose(scored.log_prob, s.edge_log_prob[batch.edge_ids], atol=1e-5)

    # advantages of the concatenation equal those of each chunk (groups do not straddle chunks here)
    config = AdvantageConfig(min_group_std=0.0, backup_beta=1.0)
    scores = [torch.arange(p.structure.leaf_node.numel(), dtype=torch.float32) % 3 for p in parts]
    joint = compute_advantages(s, torch.cat(scores), config).edge
    separate = torch.cat([compute_advantages(p.structure, sc, config).edge for p, sc in zip(parts, scores)])
    assert torch.allclose(joint, separate)
