"""Leaf normalisation, the zero-spread guard, backup rules and per-depth normalisation."""

import pytest
import torch

from treegrpo.math import plans
from treegrpo.math.advantages import backup_edge_advantages, normalize_leaf_scores, normalize_per_depth
from treegrpo.engine.update import compute_advantages
from treegrpo.engine.methods import AdvantageConfig
from tests.test_rollout import _rollout


def test_leaf_advantages_are_zero_mean_unit_std_per_group() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.5, 30.0, 31.0])
    groups = torch.tensor([5, 5, 5, 9, 9, 2, 2])
    leaf = normalize_leaf_scores(scores, groups, clip=100)
    for g in groups.unique():
        a = leaf.advantages[groups == g]
        assert abs(float(a.mean())) < 1e-6
        assert abs(float(a.std(unbiased=False)) - 1) < 1e-5
    torch.testing.assert_close(leaf.advantages[:3], torch.tensor([-1.0, 0.0, 1.0]) * (1.5**0.5), rtol=1e-5, atol=0)


def test_leaf_advantages_are_clamped_and_global_scope_uses_one_std() -> None:
    scores = torch.tensor([0.0] * 99 + [1.0])
    leaf = normalize_leaf_scores(scores, torch.zeros(100, dtype=torch.long), clip=5.0)
    assert float(leaf.advantages.max()) == 5.0
    two_groups = normalize_leaf_scores(torch.tensor([0.0, 1.0, 0.0, 3.0]), torch.tensor([0, 0, 1, 1]), std_scope="global")
    global_std = torch.tensor([0.0, 1.0, 0.0, 3.0]).std(unbiased=False)
    torch.testing.assert_close(two_groups.advantages, torch.tensor([-0.5, 0.5, -1.5, 1.5]) / global_std)


def test_guard_zeroes_groups_without_spread_and_reports_them() -> None:
    scores = torch.tensor([0.5, 0.5 + 1e-6, 0.5 - 1e-6, 0.1, 0.9, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    leaf = normalize_leaf_scores(scores, groups, min_group_std=1e-3)
    assert torch.all(leaf.advantages[:3] == 0) and torch.all(leaf.advantages[3:5] != 0)
    assert leaf.guard_fraction == 0.5
    unguarded = normalize_leaf_scores(scores, groups, min_group_std=0.0)
    assert float(unguarded.advantages[:3].abs().max()) > 1  # noise blown up to full size


def _tree_with_leaf_advantages(beta: float = 0.0):
    plan = plans.tree_plan(6, 3, 3, 1)
    _, _, r = _rollout(plan, trees=1, prompts=2)
    g = torch.Generator().manual_seed(4)
    leaf_adv = torch.randn(r.structure.leaf_node.shape[0], generator=g)
    edge = backup_edge_advantages(r.structure.node_parent, r.structure.node_depth, r.structure.edge_child, r.structure.edge_log_prob, r.structure.leaf_node,
                                  leaf_adv, beta=beta)
    return r, leaf_adv, edge


def _leaves_below(r, node: int) -> list[int]:
    parent = r.structure.node_parent.tolist()
    out = []
    for i, leaf in enumerate(r.structure.leaf_node.tolist()):
        u = leaf
        while u != -1:
            if u == node:
                out.append(i)
                break
            u = parent[u]
    return out


def test_uniform_backup_equals_the_mean_of_the_leaves_below() -> None:
    r, leaf_adv, edge = _tree_with_leaf_advantages(beta=0.0)
    for e, child in enumerate(r.structure.edge_child.tolist()):
        below = _leaves_below(r, child)
        assert below, "every edge has leaves below it"
        torch.testing.assert_close(edge[e], leaf_adv[below].mean())


def test_large_beta_picks_the_most_probable_child() -> None:
    r, leaf_adv, edge = _tree_with_leaf_advantages(beta=1e4)
    node_value = dict(zip(r.structure.edge_child.tolist(), edge.tolist()))
    for parent in r.parent_node.tolist():
        children = (r.structure.edge_parent == parent).nonzero().squeeze(1)
        if r.structure.node_parent[parent] == -1:
            continue  # the root has no incoming edge
        best = children[r.structure.edge_log_prob[children].argmax()]
        assert node_value[parent] == pytest.approx(float(edge[best]), abs=1e-5)


def test_softmax_backup_weights_by_old_log_prob() -> None:
    # root with two children, each a leaf: edge into the root does not exist, so use depth 2
    node_parent = torch.tensor([-1, 0, 1, 1])
    node_depth = torch.tensor([0, 1, 2, 2])
    edge_child = torch.tensor([1, 2, 3])
    log_prob = torch.tensor([0.0, 0.2, -0.3])
    leaf_adv = torch.tensor([1.0, -2.0])
    edge = backup_edge_advantages(node_parent, node_depth, edge_child, log_prob, torch.tensor([2, 3]), leaf_adv, beta=1.0)
    w = torch.softmax(torch.tensor([0.2, -0.3]), 0)
    torch.testing.assert_close(edge, torch.stack([(w * leaf_adv).sum(), leaf_adv[0], leaf_adv[1]]))


def test_one_child_chains_pass_the_leaf_advantage_through() -> None:
    _, _, r = _rollout(plans.flat_plan(5), trees=3, prompts=1)
    leaf_adv = torch.tensor([0.3, -1.0, 0.7])
    edge = backup_edge_advantages(r.structure.node_parent, r.structure.node_depth, r.structure.edge_child, r.structure.edge_log_prob, r.structure.leaf_node, leaf_adv)
    torch.testing.assert_close(edge, leaf_adv[r.structure.edge_tree])


def test_per_depth_normalisation() -> None:
    adv = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 2.0])
    depth = torch.tensor([1, 1, 2, 2, 1, 1])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    out = normalize_per_depth(adv, depth, group)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_compute_advantages_guard_survives_per_depth_normalisation() -> None:
    _, _, r = _rollout(plans.split_plan(6, 2, [0, 3]), trees=1, prompts=2)
    scores = torch.where(r.leaf_cond == 0, torch.tensor(0.5), torch.rand(r.leaf_cond.shape[0]))
    out = compute_advantages(r.structure, scores, AdvantageConfig(per_depth_norm=True, backup_beta=1.0))
    assert torch.all(out.edge[r.structure.edge_group == 0] == 0)
    assert torch.all(out.edge[r.structure.edge_group == 1] != 0)
    assert out.leaf.guard_fraction == 0.5


def test_std_floor_keeps_tiny_spreads_small() -> None:
    scores = torch.tensor([0.5, 0.502, 0.1, 0.9])
    groups = torch.tensor([0, 0, 1, 1])
    leaf = normalize_leaf_scores(scores, groups, std_floor=0.1, min_group_std=0.0)
    torch.testing.assert_close(leaf.advantages, torch.tensor([-0.01, 0.01, -1.0, 1.0]), atol=1e-6, rtol=1e-4)


def test_unscored_leaves_are_left_out_of_their_groups_statistics() -> None:
    """A NaN score (a remote judge that failed) is "not scored": the group's mean and std come from the
    scored leaves alone (checked against torch's own mean/std of them), the leaf's advantage is 0, and a
    group left with one scored leaf has no spread and is guarded."""
    scores = torch.tensor([0.1, float("nan"), 0.7, 0.4, float("inf"), 2.0, float("nan"), 5.0])
    groups = torch.tensor([3, 3, 3, 3, 9, 9, 9, 7])  # group 9 keeps one scored leaf; 7 has one leaf
    out = normalize_leaf_scores(scores, groups, clip=100.0)
    assert out.scored.tolist() == [True, False, True, True, False, True, False, True] and out.unscored == 3
    kept = torch.tensor([0.1, 0.7, 0.4])
    expected = (kept - kept.mean()) / (kept.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(out.advantages[[0, 2, 3]], expected)
    assert out.advantages[[1, 4, 5, 6, 7]].tolist() == [0.0] * 5 and torch.isfinite(out.advantages).all()
    assert out.guarded.tolist() == [False, True, True]  # dense ids: 3 -> 0, 7 -> 1, 9 -> 2
    everything_failed = normalize_leaf_scores(torch.full((4,), float("nan")), torch.zeros(4), std_scope="global")
    assert everything_failed.advantages.tolist() == [0.0] * 4 and everything_failed.unscored == 4


def _backup_by_recursion(r, leaf_adv: torch.Tensor, scored: torch.Tensor) -> dict[int, float]:
    """Node values by the definition: a scored leaf's advantage; an inner node, the mean of its
    children that have a value; no value where no scored leaf lies below."""
    parent = r.structure.node_parent.tolist()
    children: dict[int, list[int]] = {}
    for node, up in enumerate(parent):
        children.setdefault(up, []).append(node)
    leaf_of = {node: i for i, node in enumerate(r.structure.leaf_node.tolist())}

    def value(node: int) -> float | None:
        if node in leaf_of:
            i = leaf_of[node]
            return float(leaf_adv[i]) if bool(scored[i]) else None
        found = [v for v in (value(c) for c in children.get(node, [])) if v is not None]
        return sum(found) / len(found) if found else None

    return {node: v for node in range(len(parent)) if (v := value(node)) is not None}


@pytest.mark.parametrize("drop", [[0], [0, 1, 2], list(range(9)), list(range(27))])
def test_backup_skips_unscored_leaves_and_gives_their_subtree_zero(drop: list[int]) -> None:
    plan = plans.tree_plan(6, 3, 3, 1)
    _, _, r = _rollout(plan, trees=1, prompts=2)
    leaves = r.structure.leaf_node.shape[0]
    leaf_adv = torch.randn(leaves, generator=torch.Generator().manual_seed(1))
    scored = torch.ones(leaves, dtype=torch.bool)
    scored[drop] = False  # a leaf; a sibling set; a depth-1 subtree; a prompt's whole tree (k3, window 3: 27 leaves)
    edge = backup_edge_advantages(r.structure.node_parent, r.structure.node_depth, r.structure.edge_child,
                                  r.structure.edge_log_prob, r.structure.leaf_node, leaf_adv, leaf_scored=scored)
    expected = _backup_by_recursion(r, leaf_adv, scored)
    for e, child in enumerate(r.structure.edge_child.tolist()):
        torch.testing.assert_close(float(edge[e]), expected.get(child, 0.0))
    assert any(child not in expected for child in r.structure.edge_child.tolist())
