"""Hand-worked cases that kill mutants of the pure math modules (loss, advantages, sampling).

Each test names, in its docstring, the mistake it catches; expected values are worked out by hand or
come from an independent formula (torch.distributions, diffusers, the written recursion).
"""

from __future__ import annotations

import math

import pytest
import torch

from treegrpo.math.advantages import (
    backup_edge_advantages,
    component_normalized_scores,
    group_stats,
    normalize_leaf_scores,
)
from treegrpo.math.loss import LossConfig, NodeAggregation, clipped_surrogate, gaussian_mean_kl, policy_loss
from treegrpo.math.sampling import DDIMStepper, FlowMatchStepper, ddim_step, flow_step, gaussian_log_prob


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The textbook density, averaged over every non-batch dimension."""
    return torch.distributions.Normal(mean, std).log_prob(x).mean(dim=tuple(range(1, x.ndim)))


# ---------------------------------------------------------------- loss


def test_clip_lower_bound_is_one_minus_eps_on_both_advantage_signs() -> None:
    """Catches a wrong lower clip bound (1 - 2 eps) or upper bound (1 + 2 eps), and min/max swapped."""
    ratio = torch.tensor([0.5, 0.85, 0.5, 0.85, 1.15, 1.15])
    log_ratio = torch.log(ratio).requires_grad_(True)
    adv = torch.tensor([-2.0, -1.0, 3.0, 1.0, -1.0, 1.0])
    loss, _ = clipped_surrogate(log_ratio, adv, clip_eps=0.1)
    # A<0, r<1-eps: max(-A r, -A (1-eps)) = -A * 0.9 -> 1.8 and 0.9 (a bound of 0.8 gives 1.6 and 0.85)
    # A>0, r<1-eps: max(-A r, -A 0.9) = -A r (unclipped wins) -> -1.5 and -0.85
    # r=1.15: A<0 -> max(1.15, 1.1) = 1.15 (unclipped); A>0 -> max(-1.15, -1.1) = -1.1 (a bound of 1.2 gives -1.15)
    torch.testing.assert_close(loss, torch.tensor([1.8, 0.9, -1.5, -0.85, 1.15, -1.1]))
    loss.sum().backward()
    # d(-A r)/d log r = -A r where the unclipped term wins; 0 where the clip binds
    torch.testing.assert_close(log_ratio.grad, torch.tensor([0.0, 0.0, -1.5, -0.85, 1.15, 0.0]))


def _loss_case(how: str, kl_beta: float) -> tuple[LossConfig, dict[str, torch.Tensor]]:
    cfg = LossConfig(clip_eps=0.1, node_aggregation=NodeAggregation(how), kl_beta=kl_beta)
    inputs = dict(new_log_prob=torch.zeros(3), old_log_prob=torch.zeros(3), advantages=torch.tensor([1.0, 2.0, 4.0]),
                  parent=torch.tensor([0, 0, 1]))
    return cfg, inputs


@pytest.mark.parametrize("how, per_edge_part, kl_part", [("sum", -4.0, 0.8), ("mean", -3.0, 0.65)])
def test_policy_loss_weights_edges_and_adds_beta_times_the_aggregated_kl(how: str, per_edge_part: float,
                                                                         kl_part: float) -> None:
    """Catches a dropped edge weight, a KL without its beta, a KL averaged over edges instead of per
    parent, and the node aggregation ignored for the policy term."""
    cfg, inputs = _loss_case(how, kl_beta=0.5)
    kl = torch.tensor([0.2, 0.4, 1.0])
    out = policy_loss(**inputs, cfg=cfg, kl=kl, edge_weight=torch.tensor([3.0, 0.5, 1.0]))
    # ratio 1: per edge -A * w = [-3, -1, -4] (unweighted [-1, -2, -4]); parents {0: [-3, -1], 1: [-4]}:
    # sum -> mean(-4, -4) = -4, mean -> mean(-2, -4) = -3; KL parents {0: [0.2, 0.4], 1: [1.0]}: sum 0.8, mean 0.65
    assert float(out.loss) == pytest.approx(per_edge_part + 0.5 * kl_part)
    assert out.stats["kl"] == pytest.approx(kl_part)
    assert out.stats["policy_loss"] == pytest.approx(-8.0 / 3)  # the mean over edges, not the sum


def test_policy_loss_without_kl_weight_reports_no_kl() -> None:
    """Catches the KL term switched on at kl_beta = 0 (its stat logged although no KL is trained)."""
    cfg, inputs = _loss_case("mean", kl_beta=0.0)
    out = policy_loss(**inputs, cfg=cfg, kl=torch.tensor([5.0, 5.0, 5.0]))
    assert "kl" not in out.stats
    assert float(out.loss) == pytest.approx((-1.5 - 4.0) / 2)


def test_policy_loss_diagnostics_by_hand() -> None:
    """Catches a wrong clip-fraction threshold, approx_kl without its 1/2, and ratio_min/max swapped."""
    ratio = torch.tensor([0.5, 1.05, 1.15, 1.0])
    new = torch.log(ratio)
    out = policy_loss(new, torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, 0.5]), torch.tensor([0, 1, 1, 2]),
                      LossConfig(clip_eps=0.1))
    assert out.stats["clip_fraction"] == pytest.approx(0.5)  # |r - 1| = 0.5, 0.05, 0.15, 0 against 0.1
    assert out.stats["approx_kl"] == pytest.approx(0.5 * float((new**2).mean()))
    assert (out.stats["ratio_min"], out.stats["ratio_max"]) == pytest.approx((0.5, 1.15))
    assert out.stats["ratio_mean"] == pytest.approx(3.7 / 4)


def test_gaussian_mean_kl_is_zero_where_the_step_is_deterministic() -> None:
    """Catches the std == 0 mask dropped from the KL (a deterministic step would add dm^2 / 2)."""
    g = torch.Generator().manual_seed(8)
    mean, ref = torch.randn(3, 2, 3, 5, generator=g), torch.randn(3, 2, 3, 5, generator=g)
    std = torch.full((3, 2, 3, 5), 0.4)
    std[1] = 0.0
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, 0.4), torch.distributions.Normal(ref, 0.4))
    got = gaussian_mean_kl(mean, ref, std)
    torch.testing.assert_close(got[[0, 2]], expected[[0, 2]].mean(dim=(1, 2, 3)))
    assert float(got[1]) == 0.0


# ---------------------------------------------------------------- advantages


def test_group_without_any_scored_leaf_has_mean_and_std_zero() -> None:
    """Catches a mean or std divided by a zero count (NaN statistics for a group nobody scored)."""
    values = torch.tensor([1.0, float("nan"), 3.0, float("nan")])
    groups = torch.tensor([0, 1, 0, 1])
    mean, std = group_stats(values, groups, 2, torch.isfinite(values))
    assert mean.tolist() == [2.0, 0.0] and std.tolist() == [1.0, 0.0]
    leaf = normalize_leaf_scores(values, torch.tensor([4, 8, 4, 8]))
    assert leaf.group_mean.tolist() == [2.0, 0.0] and leaf.group_std.tolist() == [1.0, 0.0]
    assert leaf.guarded.tolist() == [False, True]


def test_flat_group_without_guard_gets_zero_not_nan() -> None:
    """Catches the eps dropped from (S - mean) / (std + eps): a zero-spread group unguarded gives 0/0."""
    leaf = normalize_leaf_scores(torch.tensor([0.3, 0.3, 0.3, 1.0, 2.0]), torch.tensor([0, 0, 0, 1, 1]),
                                 min_group_std=0.0)
    torch.testing.assert_close(leaf.advantages, torch.tensor([0.0, 0.0, 0.0, -1.0, 1.0]))


def test_clamp_is_symmetric() -> None:
    """Catches a missing lower clamp: a low outlier must be held at -clip as a high one is at +clip."""
    scores = torch.tensor([0.0] * 9 + [-1.0, 1.0] + [0.0] * 9)
    groups = torch.tensor([0] * 10 + [1] * 10)
    leaf = normalize_leaf_scores(scores, groups, clip=2.0, min_group_std=0.0)
    # group 0: nine 0s and one -1: mean -0.1, std 0.3 -> the outlier is -0.9 / 0.3 = -3 -> clamped to -2;
    # group 1 mirrors it (+3 -> 2)
    assert float(leaf.advantages[9]) == -2.0 and float(leaf.advantages[10]) == 2.0
    assert float(leaf.advantages[0]) == pytest.approx(0.1 / 0.3, rel=1e-5)


def test_guard_is_strictly_below_min_group_std() -> None:
    """Catches the guard's comparison turned into <= (a spread equal to min_group_std is not 'below')."""
    leaf = normalize_leaf_scores(torch.tensor([0.0, 1.0, 2.0, 2.25]), torch.tensor([0, 0, 1, 1]), min_group_std=0.5)
    # group 0: std exactly 0.5 (kept); group 1: std 0.125 (zeroed)
    assert leaf.guarded.tolist() == [False, True]
    torch.testing.assert_close(leaf.advantages, torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_global_std_ignores_unscored_leaves() -> None:
    """Catches the global std taken over every score, NaN included (every advantage would become NaN)."""
    scores = torch.tensor([0.0, 1.0, float("nan"), 0.0, 3.0])
    leaf = normalize_leaf_scores(scores, torch.tensor([0, 0, 0, 1, 1]), std_scope="global")
    global_std = torch.tensor([0.0, 1.0, 0.0, 3.0]).std(unbiased=False)
    torch.testing.assert_close(leaf.advantages, torch.tensor([-0.5, 0.5, 0.0, -1.5, 1.5]) / global_std)


def test_component_scores_are_unclamped_and_use_the_given_guard() -> None:
    """Catches component z-scores clamped at the leaf clip (5) and min_group_std not passed through."""
    big = torch.zeros(30)
    big[0] = 1.0  # one outlier among 30: z = sqrt(29) ~ 5.39 > 5
    quiet = torch.tensor([0.0, 2e-4, 0.0, 2e-4])  # spread 1e-4: below 1e-3, above 1e-6
    got = component_normalized_scores({"big": big}, {"big": 2.0}, torch.zeros(30, dtype=torch.long))
    assert float(got[0]) == pytest.approx(2.0 * math.sqrt(29), rel=1e-5)
    fine = component_normalized_scores({"q": quiet}, {"q": 1.0}, torch.zeros(4, dtype=torch.long), min_group_std=1e-6)
    torch.testing.assert_close(fine, torch.tensor([-1.0, 1.0, -1.0, 1.0]), rtol=1e-4, atol=1e-4)
    coarse = component_normalized_scores({"q": quiet}, {"q": 1.0}, torch.zeros(4, dtype=torch.long), min_group_std=1e-3)
    assert coarse.tolist() == [0.0] * 4


def test_backup_softmax_is_stable_for_very_negative_log_probs() -> None:
    """Catches the max-shift dropped (or the min used) in the sibling softmax: exp under/overflows to NaN."""
    node_parent = torch.tensor([-1, 0, 0, 0, 1, 1, 1])
    node_depth = torch.tensor([0, 1, 1, 1, 2, 2, 2])
    edge_child = torch.tensor([1, 2, 3, 4, 5, 6])
    log_prob = torch.tensor([-900.0, -905.0, -1000.0, -2000.0, -2001.0, -2002.0])
    leaf_adv = torch.tensor([0.2, -0.4, 1.0, 2.0, -1.0])  # leaves: nodes 2, 3, 4, 5, 6
    edge = backup_edge_advantages(node_parent, node_depth, edge_child, log_prob, torch.tensor([2, 3, 4, 5, 6]),
                                  leaf_adv, beta=1.0)
    # node 1's children 4, 5, 6 have weights e^0 : e^-1 : e^-2 (relative to -2000)
    w = torch.tensor([1.0, math.exp(-1.0), math.exp(-2.0)])
    node1 = float((w * leaf_adv[2:]).sum() / w.sum())
    torch.testing.assert_close(edge, torch.tensor([node1, 0.2, -0.4, 1.0, 2.0, -1.0]))


def test_backup_refuses_an_edge_without_a_leaf_below() -> None:
    """Catches the consistency check dropped: an edge into a dead-end node would silently get 0."""
    node_parent = torch.tensor([-1, 0, 1, 0])
    node_depth = torch.tensor([0, 1, 2, 1])
    with pytest.raises(RuntimeError, match="inconsistent"):
        backup_edge_advantages(node_parent, node_depth, torch.tensor([1, 2, 3]), torch.zeros(3), torch.tensor([3]),
                               torch.tensor([1.0]))


# ---------------------------------------------------------------- sampling


def test_cps_step_is_the_written_coefficients_preserving_formula() -> None:
    """Catches cps mistakes: std from sigma instead of sigma_next, the sign or weight of x0 / the noise
    estimate, and the noise coefficient (sigma_next cos(level pi / 2), not sigma_next)."""
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 3, 4, 6, generator=g)
    sigma, sigma_next = torch.tensor([0.8, 0.6]), torch.tensor([0.55, 0.45])
    level = 0.7
    out = flow_step(v, x, sigma, sigma_next, level, generator=g, sde_type="cps")
    s, n = sigma.view(2, 1, 1, 1), sigma_next.view(2, 1, 1, 1)
    x0, noise = x - s * v, x + (1 - s) * v
    mean = x0 * (1 - n) + noise * n * math.cos(level * math.pi / 2)
    std = n * math.sin(level * math.pi / 2)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std, std.expand_as(x))
    torch.testing.assert_close(out.log_prob, _normal_log_prob(out.prev_sample, mean, std.expand_as(x)))


def test_flow_step_at_sigma_one_defaults_sigma_max_to_sigma_next() -> None:
    """Catches the default sigma_max taken from sigma (1 / (1 - 1): an infinite std at the first step)."""
    x, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    out = flow_step(v, x, 1.0, 0.75, 0.7)
    # s_t = 0.7 sqrt(1 / 0.25) = 1.4; std = 1.4 sqrt(0.25) = 0.7; mean = x (1 - 1.96 * 0.25 / 2) - 0.25 v
    torch.testing.assert_close(out.std, torch.full_like(x, 0.7))
    torch.testing.assert_close(out.mean, 0.755 * x - 0.25 * v)


def test_flow_stepper_honours_per_element_stochastic_flags_and_sigma_max() -> None:
    """Catches the stochastic flags ignored and sigma_max taken from sigmas[0] (= 1) at the first step."""
    stepper = FlowMatchStepper(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), noise_level=0.7)
    x, v = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    out = stepper.step(v, x, torch.tensor([0, 2]), torch.tensor([True, False]))
    torch.testing.assert_close(out.mean[0], 0.755 * x[0] - 0.25 * v[0])  # sigma 1 -> 0.75, as above
    torch.testing.assert_close(out.std[0], torch.full_like(x[0], 0.7))
    torch.testing.assert_close(out.mean[1], x[1] - 0.25 * v[1])  # the Euler step 0.5 -> 0.25
    assert float(out.std[1].abs().max()) == 0.0 and float(out.log_prob[1]) == 0.0
    torch.testing.assert_close(out.prev_sample[1], out.mean[1])


def test_gaussian_log_prob_on_non_square_latents_with_a_deterministic_row() -> None:
    """Catches a wrong density constant or variance factor, a sum over dims, and the std == 0 mask dropped."""
    g = torch.Generator().manual_seed(6)
    x, mean = torch.randn(3, 2, 3, 7, generator=g), torch.randn(3, 2, 3, 7, generator=g)
    std = torch.rand(3, 2, 3, 7, generator=g) + 0.2
    std[2] = 0.0
    got = gaussian_log_prob(x, mean, std)
    torch.testing.assert_close(got[:2], _normal_log_prob(x[:2], mean[:2], std[:2]))
    assert float(got[2]) == 0.0


def test_ddim_step_by_hand_with_a_previous_timestep_of_zero() -> None:
    """Catches alphas_cumprod[0] replaced by the final alpha when the previous timestep is 0 (not < 0)."""
    stepper = DDIMStepper(torch.tensor([0.9, 0.8, 0.5, 0.3, 0.2, 0.1]), torch.tensor([5, 3]), 1.0, eta=0.0)
    x, eps = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    out = stepper.step(eps, x, torch.tensor([1]), stochastic=True)  # t = 3, previous 3 - 6 // 2 = 0
    x0 = (x - math.sqrt(0.7) * eps) / math.sqrt(0.3)
    torch.testing.assert_close(out.mean, math.sqrt(0.9) * x0 + math.sqrt(0.1) * eps)
    direct = ddim_step(eps, x, 0.3, 0.9, 0.0)
    torch.testing.assert_close(out.mean, direct.mean)
