"""The clipped objective (by hand), window placement laws, plans and presets."""

import collections

import pytest
import torch

from treegrpo.math import plans
from treegrpo.math.loss import LossConfig, aggregate_per_parent, clipped_surrogate, gaussian_mean_kl, policy_loss
from treegrpo.engine.methods import METHODS, plan_for_iteration, preset


def test_clipped_surrogate_by_hand() -> None:
    new = torch.log(torch.tensor([1.5, 0.5, 1.05, 0.95]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    loss, ratio = clipped_surrogate(new - old, adv, clip_eps=0.1)
    # A>0: min(r, clip(r)) -> 1.1 for r=1.5, 0.5 for r=0.5; A<0: max(r, clip(r)) -> 1.05 (inside), 0.95 (inside)
    torch.testing.assert_close(loss, torch.tensor([-1.1, -0.5, 2.1, 1.9]))
    torch.testing.assert_close(ratio, torch.tensor([1.5, 0.5, 1.05, 0.95]))


def test_clipped_surrogate_lower_bound_active_and_gradients() -> None:
    """Each side of the clip where it binds: A < 0 with r < 1 - eps is held at 1 - eps (no gradient), A < 0
    with r > 1 + eps is not clipped (the pessimistic side), A > 0 with r < 1 - eps is not clipped either."""
    log_ratio = torch.log(torch.tensor([0.5, 1.5, 0.5, 1.5])).requires_grad_(True)
    adv = torch.tensor([-2.0, -2.0, 1.0, 1.0])
    loss, _ = clipped_surrogate(log_ratio, adv, clip_eps=0.1)
    # -A * 0.9 = 1.8 (a lower bound of 1 - 2 eps would give 1.6); -A * 1.5 = 3.0; -0.5; -1.1
    torch.testing.assert_close(loss, torch.tensor([1.8, 3.0, -0.5, -1.1]))
    loss.sum().backward()
    # d(-A r)/d log r = -A r where unclipped; 0 where the clip binds
    torch.testing.assert_close(log_ratio.grad, torch.tensor([0.0, 3.0, -0.5, 0.0]))


def test_aggregation_per_parent() -> None:
    values = torch.tensor([1.0, 3.0, 5.0, 10.0])
    parent = torch.tensor([0, 0, 0, 1])
    assert float(aggregate_per_parent(values, parent, "mean")) == pytest.approx((3.0 + 10.0) / 2)
    assert float(aggregate_per_parent(values, parent, "sum")) == pytest.approx((9.0 + 10.0) / 2)
    with pytest.raises(ValueError, match="not a valid NodeAggregation"):
        aggregate_per_parent(values, parent, "max")


def test_policy_loss_gradient_pushes_up_positive_advantage_edges() -> None:
    new = torch.zeros(3, requires_grad=True)
    out = policy_loss(new, torch.zeros(3), torch.tensor([1.0, -1.0, 0.0]), torch.tensor([0, 0, 1]),
                      LossConfig(clip_eps=0.2))
    out.loss.backward()
    assert new.grad[0] < 0 < new.grad[1] and new.grad[2] == 0  # descent raises edge 0, lowers edge 1
    assert out.stats["ratio_mean"] == 1.0 and out.stats["clip_fraction"] == 0.0


def test_gaussian_mean_kl_matches_torch_distributions() -> None:
    m, r, s = torch.randn(2, 3), torch.randn(2, 3), torch.rand(2, 3) + 0.1
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m, s), torch.distributions.Normal(r, s))
    torch.testing.assert_close(gaussian_mean_kl(m, r, s), expected.mean(1))


@pytest.mark.parametrize("placement", ["fixed", "shifting", "geometric"])
def test_windows_never_touch_the_last_step(placement: str) -> None:
    for epoch in range(200):
        start = plans.window_start(epoch, 10, 3, placement, start=2, shift=1, shift_every=3, seed=7)  # type: ignore[arg-type]
        assert 0 <= start and start + 3 <= 9


def test_shifting_window_moves_s_steps_every_tau_epochs() -> None:
    starts = [plans.window_start(e, 10, 3, "shifting", start=0, shift=2, shift_every=5) for e in range(20)]
    assert starts == [0] * 5 + [2] * 5 + [4] * 5 + [6] * 5


def test_geometric_window_follows_the_truncated_law_and_is_seeded() -> None:
    draws = [plans.window_start(e, 10, 3, "geometric", geometric_ratio=0.5, seed=1) for e in range(8000)]
    assert draws[:50] == [plans.window_start(e, 10, 3, "geometric", geometric_ratio=0.5, seed=1) for e in range(50)]
    law = plans.geometric_window_probabilities(10, 3, 0.5)
    assert len(law) == 7 and sum(law) == pytest.approx(1.0)
    counts = collections.Counter(draws)
    for i, p in enumerate(law):
        assert counts[i] / len(draws) == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plans.tree_plan(10, 0, 3, 0), "tree.k must be >= 1"),
        (lambda: plans.check_window(10, 10), "does not fit"),
        (lambda: plans.check_window(10, 0), "tree.window must be >= 1"),
        (lambda: plans.window_start(0, 10, 3, "fixed", start=7), r"lie in \[0, 6\]"),
        (lambda: plans.split_plan(10, 2, [0, 12]), "outside"),
        (lambda: plans.sample_trained_steps(10, 0.0, 0, 0), "train_fraction"),
        (lambda: preset("tree_grpo"), "did you mean 'treegrpo'"),
        (lambda: preset("treegrpo", tree={"kk": 2}), "unknown tree keys"),
    ],
)
def test_impossible_shapes_are_rejected_with_the_fix(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_presets_are_the_schedules_of_alg_md() -> None:
    t = 10
    tree = plan_for_iteration(preset("treegrpo", tree={"window_placement": "fixed", "window_start": 2}).tree, t, 0)
    assert plans.describe(tree) == "o o B3 B3 B3 o o o o o"
    assert plans.describe(plan_for_iteration(preset("flow_grpo").tree, t, 0)) == " ".join(["S"] * 10)
    dance = plan_for_iteration(preset("dance_grpo").tree, t, 3, seed=1)
    assert sum(s.trained for s in dance) == 6 and all(s.stochastic for s in dance)
    assert plans.describe(plan_for_iteration(preset("mix_grpo").tree, t, 0)) == "S S S S o o o o o o"
    assert plans.describe(plan_for_iteration(preset("mix_grpo").tree, t, 50)) == "o o S S S S o o o o"
    assert plans.describe(plan_for_iteration(preset("branch_grpo").tree, t, 0)) == "B2 S B2 S B2 S B2 S S S"
    assert plans.describe(plan_for_iteration(preset("ddpo").tree, t, 0)) == " ".join(["S"] * 10)
    for name in ("diffusion_nft", "awm"):
        assert plans.describe(plan_for_iteration(preset(name).tree, t, 0)) == " ".join(["o"] * 10)
        assert preset(name).loss.objective == name.removeprefix("diffusion_")
    assert set(METHODS) == {"treegrpo", "flow_grpo", "dance_grpo", "mix_grpo", "branch_grpo", "ddpo", "diffusion_nft", "awm"}


def test_tree_nfe_against_flat_grpo_with_the_same_leaves() -> None:
    """The closed forms behind the README's NFE table (k=3, w=3, 10 steps, 27 leaves)."""
    tree = plans.tree_plan(10, 3, 3, 0)
    flat = plans.flat_plan(10)
    assert plans.leaves_per_tree(tree) == 27
    assert plans.rollout_nfe_per_tree(tree) == 1 + 3 + 9 + 27 * 7 == 202
    assert plans.training_nfe_per_tree(tree) == 13 and plans.trained_edges_per_tree(tree) == 39
    assert 27 * plans.rollout_nfe_per_tree(flat) == 270 and 27 * plans.training_nfe_per_tree(flat) == 270
