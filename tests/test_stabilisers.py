"""Tree-training stabilisers against hand-worked cases: GRPO-Guard's ratio normalisation and step
weights, and minibatches sized in trained edges."""

from __future__ import annotations

import math

import pytest
import torch

from treegrpo.math import plans
from treegrpo.math.loss import LossConfig, guarded_log_ratio, step_weights
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.sampling import FlowMatchStepper, gaussian_log_prob
from treegrpo.engine.minibatches import make_minibatches, minibatch_loss
from tests.test_rollout import LinearVelocity


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """The textbook density, averaged over dimensions (as the engine averages)."""
    return torch.distributions.Normal(mean, std).log_prob(x).mean(dim=1)


@pytest.mark.parametrize("std", [0.05, 0.3, 1.0])
def test_guarded_log_ratio_is_mean_z_times_d_at_every_step_scale(std: float) -> None:
    z = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.3, 0.3, -1.0, 2.0]])
    old_mean = torch.tensor([[0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 1.0, 2.0]])
    d = torch.tensor([[0.02, -0.01, 0.0, 0.03], [0.01, 0.01, -0.02, 0.0]])
    x = old_mean + std * z
    new_lp, old_lp = _normal_log_prob(x, old_mean + d, std), _normal_log_prob(x, old_mean, std)
    torch.testing.assert_close(gaussian_log_prob(x, old_mean, torch.full_like(x, std)), old_lp)
    plain = new_lp - old_lp
    by_hand = (z * d).mean(dim=1) / std - (d**2).mean(dim=1) / (2 * std**2)
    torch.testing.assert_close(plain, by_hand, rtol=1e-4, atol=1e-5)
    guarded = guarded_log_ratio(new_lp, old_lp, old_mean + d, old_mean, torch.full_like(x, std))
    torch.testing.assert_close(guarded, (z * d).mean(dim=1), rtol=1e-4, atol=1e-6)  # no bias, no 1/std


def test_guarded_ratios_are_centred_where_plain_ratios_sit_below_one() -> None:
    generator = torch.Generator().manual_seed(0)
    n, dims, std = 20000, 16, 0.1
    old_mean = torch.zeros(n, dims)
    d = torch.full((n, dims), 0.05)
    x = old_mean + std * torch.randn(n, dims, generator=generator)
    new_lp, old_lp = _normal_log_prob(x, old_mean + d, std), _normal_log_prob(x, old_mean, std)
    plain = new_lp - old_lp
    guarded = guarded_log_ratio(new_lp, old_lp, old_mean + d, old_mean, torch.full_like(x, std))
    shift = 0.05**2 / (2 * std**2)  # the bias: mean(d^2) / 2 s^2
    assert float(plain.mean()) == pytest.approx(-shift, abs=0.01)
    assert float(guarded.mean()) == pytest.approx(0.0, abs=0.002)
    # the guarded log-ratio's spread is std(mean(z d)) = |d| / sqrt(dims), whatever the step's std
    assert float(guarded.std()) == pytest.approx(0.05 / math.sqrt(dims), rel=0.05)


def test_step_weights_by_hand() -> None:
    weights = step_weights(torch.tensor([1.0, 0.75, 0.25, 0.0]))  # steps 0.25, 0.5, 0.25 -> 1/dt 4, 2, 4
    torch.testing.assert_close(weights, torch.tensor([1.2, 0.6, 1.2]))
    with pytest.raises(ValueError, match="decreasing"):
        step_weights(torch.tensor([1.0, 1.0, 0.0]))


def _rollout(plan: plans.Plan, trees: int, keep_means: bool = False):
    model = LinearVelocity(prompts=trees)
    stepper = FlowMatchStepper(torch.linspace(1, 0, len(plan) + 1), noise_level=0.7)
    noise = torch.randn(trees, 6, generator=torch.Generator().manual_seed(0))
    rollout = rollout_trees(model, stepper, plan, noise, torch.arange(trees), generator=torch.Generator().manual_seed(1),
                            keep_means=keep_means)
    return model, stepper, rollout


def test_minibatches_in_edges_give_a_tree_and_a_flat_plan_the_same_steps_per_edge() -> None:
    # k3 w2: per tree 1 + 3 parents of 3 children = 12 edges; flat, 4 trained steps, 6 trees: 24 parents of 1 edge
    _, _, tree = _rollout(plans.tree_plan(4, k=3, window=2, start=0), trees=2)
    _, _, flat = _rollout(plans.flat_plan(4), trees=6)
    for rollout, parents in ((tree, [2, 2, 2, 2]), (flat, [6, 6, 6, 6])):
        mask = torch.ones(rollout.structure.num_edges, dtype=torch.bool)
        batches = make_minibatches(rollout, mask, None, torch.Generator().manual_seed(0), edges_per_batch=6)
        assert [b.parent_slots.numel() for b in batches] == parents
        assert [b.edge_ids.numel() for b in batches] == [6, 6, 6, 6]
    # a parent with 2 of its 3 edges selected counts 2: 3 + 2 fill the first batch of 5
    mask = torch.ones(tree.structure.num_edges, dtype=torch.bool)
    mask[tree.edge_parent_slot == 0] &= torch.tensor([True, True, False])
    batches = make_minibatches(tree, mask, None, torch.Generator().manual_seed(0), edges_per_batch=5)
    assert sum(b.edge_ids.numel() for b in batches) == 23 and all(b.edge_ids.numel() >= 5 for b in batches[:-1])
    with pytest.raises(ValueError, match="exactly one"):
        make_minibatches(tree, mask, 4, edges_per_batch=5)


def test_guarded_ratio_is_one_before_any_update_and_needs_the_means() -> None:
    model, stepper, rollout = _rollout(plans.tree_plan(5, k=2, window=2, start=1), trees=2, keep_means=True)
    assert rollout.parent_mean is not None and rollout.parent_mean.shape == rollout.parent_latents.shape
    mask = torch.ones(rollout.structure.num_edges, dtype=torch.bool)
    advantages = torch.randn(rollout.structure.num_edges, generator=torch.Generator().manual_seed(2))
    cfg = LossConfig(ratio_norm=True, step_reweight=True)
    for batch in make_minibatches(rollout, mask, 2):
        out = minibatch_loss(model, stepper, rollout, batch, advantages, cfg)
        assert out.stats["ratio_min"] == pytest.approx(1.0, abs=1e-6) and out.stats["ratio_max"] == pytest.approx(1.0, abs=1e-6)
    _, _, without = _rollout(plans.tree_plan(5, k=2, window=2, start=1), trees=2)
    with pytest.raises(ValueError, match="keep_means"):
        minibatch_loss(model, stepper, without, make_minibatches(without, mask, 2)[0], advantages, cfg)


def test_depth_scale_gives_every_depth_rms_one_by_hand() -> None:
    from treegrpo.math.advantages import equalize_depth_scale

    edge = torch.tensor([0.3, -0.4, 1.0, -2.0, 0.0, 2.0])
    depth = torch.tensor([1, 1, 2, 2, 2, 2])
    # depth 1: rms sqrt((0.09 + 0.16) / 2) = sqrt(0.125); depth 2: sqrt((1 + 4 + 0 + 4) / 4) = 1.5
    expected = torch.tensor([0.3 / 0.125**0.5, -0.4 / 0.125**0.5, 1 / 1.5, -2 / 1.5, 0.0, 2 / 1.5])
    torch.testing.assert_close(equalize_depth_scale(edge, depth), expected)


def test_depth_scale_in_compute_advantages() -> None:
    from treegrpo.engine.update import compute_advantages
    from treegrpo.engine.methods import AdvantageConfig

    _, _, rollout = _rollout(plans.tree_plan(5, k=2, window=3, start=0), trees=3)
    scores = torch.randn(rollout.structure.leaf_node.numel(), generator=torch.Generator().manual_seed(4))
    plain = compute_advantages(rollout.structure, scores, AdvantageConfig(min_group_std=0.0)).edge
    scaled = compute_advantages(rollout.structure, scores, AdvantageConfig(min_group_std=0.0, depth_scale=True)).edge
    depth = rollout.structure.edge_depth
    for d in (1, 2, 3):
        assert float(scaled[depth == d].square().mean().sqrt()) == pytest.approx(1.0, abs=1e-4)
        assert torch.equal(torch.sign(scaled[depth == d]), torch.sign(plain[depth == d]))
