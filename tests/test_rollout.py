"""Tree rollout: closed-form counts, shared prefixes, sibling independence, exact re-scoring."""

import random

import pytest
import torch

from treegrpo.math import plans
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.sampling import FlowMatchStepper
from treegrpo.engine.minibatches import Minibatch, make_minibatches, rescore_edges


class LinearVelocity(torch.nn.Module):
    """A tiny conditioned velocity field: enough to make every step depend on latents, step and prompt."""

    def __init__(self, dim: int = 6, prompts: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=g) * 0.3)
        self.prompt = torch.nn.Parameter(torch.randn(prompts, dim, generator=g))

    def forward(self, x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.weight) + self.prompt[cond] * (1 + step[:, None].float() / 10)


def _rollout(plan: plans.Plan, trees: int = 2, prompts: int = 2, max_batch: int = 64, seed: int = 0, antithetic: bool = False):
    model = LinearVelocity(prompts=prompts)
    stepper = FlowMatchStepper(torch.linspace(1, 0, len(plan) + 1), noise_level=0.7)
    root_cond = torch.arange(prompts).repeat_interleave(trees)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(root_cond.shape[0], 6, generator=g)
    return model, stepper, rollout_trees(model, stepper, plan, noise, root_cond, max_batch=max_batch, generator=g,
                                         antithetic=antithetic)


@pytest.mark.parametrize("case", range(12))
def test_counts_equal_the_closed_form(case: int) -> None:
    rng = random.Random(case)
    steps, k = rng.randint(3, 9), rng.randint(2, 3)
    window = rng.randint(1, min(3, steps - 1))
    start = rng.randint(0, plans.max_window_start(steps, window))
    plan = plans.tree_plan(steps, k, window, start)
    trees = 3
    _, _, r = _rollout(plan, trees=1, prompts=trees)
    assert r.structure.num_nodes == trees * plans.nodes_per_tree(plan) == trees * (k ** (window + 1) - 1) // (k - 1)
    assert r.leaf_latents.shape[0] == trees * plans.leaves_per_tree(plan) == trees * k**window
    assert r.nfe == trees * plans.rollout_nfe_per_tree(plan)
    assert r.nfe == trees * (start + sum(k**i for i in range(window)) + k**window * (steps - start - window))
    assert r.parent_latents.shape[0] == trees * plans.training_nfe_per_tree(plan) == trees * (k**window - 1) // (k - 1)
    assert r.child_latents.shape[0] == trees * plans.trained_edges_per_tree(plan)


def test_hand_worked_tree() -> None:
    # 4 steps, k=2 at steps 1 and 2: root -> 2 -> 4 leaves; NFE 1 + 1 + 2 + 4 = 8.
    plan = plans.tree_plan(4, 2, 2, 1)
    assert plans.describe(plan) == "o B2 B2 o"
    _, _, r = _rollout(plan, trees=1, prompts=1)
    assert r.nfe == 8 and r.structure.num_nodes == 7
    assert r.structure.node_parent.tolist() == [-1, 0, 0, 1, 1, 2, 2]
    assert r.structure.node_depth.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert r.parent_node.tolist() == [0, 1, 2]
    assert r.structure.edge_parent.tolist() == [0, 0, 1, 1, 2, 2]
    assert r.edge_step.tolist() == [1, 1, 2, 2, 2, 2]
    assert r.structure.leaf_node.tolist() == [3, 4, 5, 6]


def test_leaves_of_a_tree_share_the_prefix_and_siblings_differ() -> None:
    plan = plans.tree_plan(6, 3, 2, 2)
    _, _, r = _rollout(plan, trees=2, prompts=2)
    # every parent of the first branching step of a tree holds identical latents: the shared prefix
    first = r.parent_step == 2
    assert first.sum() == 4  # one per tree
    for tree in range(4):
        roots_children = r.structure.edge_child[(r.structure.edge_tree == tree) & (r.edge_step == 2)]
        # the ODE prefix is computed once, so each child's parent row is the same tensor row
        slots = r.edge_parent_slot[(r.structure.edge_tree == tree) & (r.edge_step == 2)]
        assert slots.unique().numel() == 1
        siblings = r.child_latents[torch.isin(r.structure.edge_child, roots_children)]
        assert torch.cdist(siblings, siblings).fill_diagonal_(1.0).min() > 1e-3
    # and a re-run of the deterministic prefix alone reproduces the parent latents bit for bit
    model, stepper, _ = _rollout(plan, trees=2, prompts=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    cond = torch.arange(2).repeat_interleave(2)
    with torch.no_grad():
        for step in range(2):
            index = torch.full((4,), step)
            x = stepper.step(model(x, index, cond), x, index, False).prev_sample
    assert torch.equal(x, r.parent_latents[first])


def test_rescoring_with_unchanged_parameters_gives_ratio_one() -> None:
    plan = plans.tree_plan(8, 3, 3, 1)
    model, stepper, r = _rollout(plan, trees=2, prompts=3, max_batch=5)
    edge_mask = torch.ones(r.structure.edge_child.shape[0], dtype=torch.bool)
    for batch in make_minibatches(r, edge_mask, parents_per_batch=4, generator=torch.Generator().manual_seed(0)):
        scored = rescore_edges(model, stepper, r, batch)
        ratio = torch.exp(scored.log_prob - r.structure.edge_log_prob[batch.edge_ids])
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


def test_minibatches_cover_every_edge_once_with_whole_parents() -> None:
    _, _, r = _rollout(plans.split_plan(6, 2, [0, 3]), trees=1, prompts=2)
    mask = torch.ones(r.structure.edge_child.shape[0], dtype=torch.bool)
    batches: list[Minibatch] = make_minibatches(r, mask, 3)
    seen = torch.cat([b.edge_ids for b in batches])
    assert sorted(seen.tolist()) == list(range(r.structure.edge_child.shape[0]))
    for b in batches:
        assert torch.equal(b.parent_slots[b.edge_local_parent], r.edge_parent_slot[b.edge_ids])


def test_chunking_does_not_change_the_result_and_is_counted() -> None:
    plan = plans.tree_plan(5, 2, 2, 0)
    _, _, whole = _rollout(plan, max_batch=1000)
    _, _, chunked = _rollout(plan, max_batch=3)
    torch.testing.assert_close(whole.leaf_latents, chunked.leaf_latents)
    assert whole.nfe == chunked.nfe and chunked.model_calls > whole.model_calls


def test_flat_plan_is_one_chain_per_trajectory() -> None:
    plan = plans.flat_plan(5, trained_steps=[1, 3])
    _, _, r = _rollout(plan, trees=4, prompts=2)
    assert r.leaf_latents.shape[0] == 8 and r.nfe == 8 * 5
    assert r.child_latents.shape[0] == 16 and r.parent_latents.shape[0] == 16
    assert r.edge_step.unique().tolist() == [1, 3]


def test_plan_length_must_match_the_sampler() -> None:
    model = LinearVelocity()
    stepper = FlowMatchStepper(torch.linspace(1, 0, 6))
    with pytest.raises(ValueError, match="plan has 4 steps"):
        rollout_trees(model, stepper, plans.tree_plan(4, 2, 1, 0), torch.zeros(1, 6), torch.zeros(1))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_antithetic_siblings_mirror_through_the_step_mean_and_keep_exact_log_probs(k: int) -> None:
    plan = plans.tree_plan(6, k, 2, 1)
    model, stepper, r = _rollout(plan, trees=2, prompts=2, antithetic=True)
    edge_mask = torch.ones(r.structure.edge_child.shape[0], dtype=torch.bool)
    (batch,) = make_minibatches(r, edge_mask, parents_per_batch=r.num_parents)
    with torch.no_grad():
        scored = rescore_edges(model, stepper, r, batch)
    order = torch.argsort(batch.edge_ids)
    mean, std = scored.mean[order], scored.std[order]  # edges in rollout order: parent-major, k per parent
    children = r.child_latents
    noise = ((children - mean) / std).reshape(-1, k, 6)
    pairs = k // 2
    torch.testing.assert_close(noise[:, 1 : 2 * pairs : 2], -noise[:, 0 : 2 * pairs : 2], atol=1e-5, rtol=0)
    assert (noise[:, 0].abs() > 1e-3).all()  # a real draw, not the mean
    if k % 2:  # the odd last child keeps a draw of its own
        assert (noise[:, -1] + noise[:, -2]).abs().max() > 1e-2
    # stored log-probs are the Gaussian density of each child (textbook formula, mean over dimensions)
    textbook = (-0.5 * ((children - mean) / std) ** 2 - torch.log(std) - 0.5 * torch.log(torch.tensor(2 * torch.pi))).mean(1)
    torch.testing.assert_close(r.structure.edge_log_prob, textbook, atol=1e-5, rtol=0)
    # a mirrored pair is equally likely
    log_prob = r.structure.edge_log_prob.reshape(-1, k)
    torch.testing.assert_close(log_prob[:, 1 : 2 * pairs : 2], log_prob[:, 0 : 2 * pairs : 2], atol=1e-5, rtol=0)
    # without the option siblings are independent draws
    _, _, plain = _rollout(plan, trees=2, prompts=2)
    plain_noise = (plain.child_latents - mean) / std
    assert (plain_noise.reshape(-1, k, 6)[:, 1] + plain_noise.reshape(-1, k, 6)[:, 0]).abs().max() > 1e-2
