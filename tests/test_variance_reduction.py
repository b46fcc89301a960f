"""Variance reduction of advantages against hand-worked and brute-force computations: the
leave-one-out baseline per node (``advantage.baseline=siblings``) and per-reward normalisation
before the sum (``advantage.component_norm``), through the engine and the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import treegrpo.trainer.loop
from tests.test_stabilisers import _rollout
from tests.test_trainer import tiny_values
from treegrpo.math import plans
from treegrpo.math.advantages import component_normalized_scores, sibling_baseline
from treegrpo.config import ConfigError, resolve_config
from treegrpo.engine.update import compute_advantages
from treegrpo.engine.methods import AdvantageConfig


def test_sibling_baseline_by_hand() -> None:
    values = torch.tensor([1.0, 2.0, 6.0, -1.0, 3.0, 0.5])
    parents = torch.tensor([7, 7, 7, 4, 4, 9])  # parent 7: three children, 4: two, 9: one
    expected = torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, -1 - 3.0, 3 + 1.0, 0.0])
    torch.testing.assert_close(sibling_baseline(values, parents), expected)


def test_sibling_baseline_in_compute_advantages_matches_a_loop_over_nodes() -> None:
    _, _, rollout = _rollout(plans.tree_plan(5, k=3, window=2, start=1), trees=4)
    structure = rollout.structure
    scores = torch.randn(structure.leaf_node.numel(), generator=torch.Generator().manual_seed(3))
    plain = compute_advantages(structure, scores, AdvantageConfig(min_group_std=0.0)).edge
    local = compute_advantages(structure, scores, AdvantageConfig(min_group_std=0.0, baseline="siblings")).edge
    parent = structure.edge_parent.tolist()
    for edge, node in enumerate(parent):
        others = [float(plain[e]) for e, p in enumerate(parent) if p == node and e != edge]
        assert len(others) == 2  # k = 3 at every branching node
        assert float(local[edge]) == pytest.approx(float(plain[edge]) - sum(others) / 2, abs=1e-5)
    for node in set(parent):  # siblings' advantages cancel at each node: only the choice among them is credited
        assert float(local[structure.edge_parent == node].sum()) == pytest.approx(0.0, abs=1e-5)


def _z_by_hand(values: np.ndarray, groups: np.ndarray, min_std: float) -> np.ndarray:
    out = np.zeros_like(values)
    for group in np.unique(groups):
        member = groups == group
        spread = values[member].std()
        if spread >= min_std:
            out[member] = (values[member] - values[member].mean()) / (spread + 1e-8)
    return out


def test_component_normalized_scores_by_hand_with_a_flat_group_and_a_wide_scale() -> None:
    generator = np.random.default_rng(0)
    groups = np.array([5, 5, 5, 5, 2, 2, 2, 9, 9, 9])
    style = generator.normal(size=10)
    shapes = generator.normal(size=10) * 1000.0  # a wide-spread component: raw sums would follow it alone
    shapes[groups == 2] = 0.75  # every leaf of group 2 agrees on it: no signal there
    weights = {"style": 1.0, "shapes": 3.0}
    got = component_normalized_scores({"style": torch.tensor(style), "shapes": torch.tensor(shapes)}, weights,
                                      torch.tensor(groups), min_group_std=1e-3)
    expected = _z_by_hand(style, groups, 1e-3) + 3.0 * _z_by_hand(shapes, groups, 1e-3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.allclose(got.numpy()[groups == 2], _z_by_hand(style, groups, 1e-3)[groups == 2], atol=1e-5)
    rescaled = component_normalized_scores({"style": torch.tensor(style), "shapes": torch.tensor(shapes / 1000.0)},
                                           weights, torch.tensor(groups), min_group_std=1e-6)
    wide = component_normalized_scores({"style": torch.tensor(style), "shapes": torch.tensor(shapes)}, weights,
                                       torch.tensor(groups), min_group_std=1e-6)
    torch.testing.assert_close(rescaled, wide, rtol=1e-4, atol=1e-4)  # a component's scale no longer matters


def test_trainer_ranks_leaves_by_component_normalized_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = tiny_values(tmp_path, iterations=1, eval_every=0, eval_at_start=False)
    values["reward"] = {"jpeg_compressibility": 1.0, "shapes_style": 3.0}
    values["advantage"] = {"component_norm": True, "baseline": "siblings"}
    cfg = resolve_config(values, [f"output_dir={tmp_path / 'run'}"])
    seen: dict[str, Any] = {}
    share, advantages = treegrpo.trainer.loop.Trainer._share_scores, treegrpo.trainer.loop.compute_advantages

    def keep_shared(self: Any, *args: Any) -> Any:
        seen["shared"] = share(self, *args)
        return seen["shared"]

    def keep_ranked(structure: Any, scores: torch.Tensor, config: Any) -> Any:
        seen["ranked"] = scores
        return advantages(structure, scores, config)

    monkeypatch.setattr(treegrpo.trainer.loop.Trainer, "_share_scores", keep_shared)
    monkeypatch.setattr(treegrpo.trainer.loop, "compute_advantages", keep_ranked)
    trainer = treegrpo.trainer.loop.Trainer(cfg)
    trainer.run_iteration(0)
    shared = seen["shared"]
    groups = shared.structure.leaf_group.numpy()
    assert sorted(shared.components) == ["jpeg_compressibility", "shapes_style"]
    expected = (_z_by_hand(shared.components["jpeg_compressibility"].numpy().astype(np.float64), groups, 1e-3)
                + 3.0 * _z_by_hand(shared.components["shapes_style"].numpy().astype(np.float64), groups, 1e-3))
    np.testing.assert_allclose(seen["ranked"].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(seen["ranked"].numpy(), shared.scores.numpy())


def test_contradicting_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names one"):
        resolve_config(tiny_values(tmp_path), ["advantage.component_norm=true"])
    with pytest.raises(ConfigError, match="never branches"):
        resolve_config(tiny_values(tmp_path), ["method=dance_grpo", "advantage.baseline=siblings"])
    with pytest.raises(ConfigError, match="advantage.baseline shapes edge advantages"):
        resolve_config(tiny_values(tmp_path), ["method=awm", "advantage.baseline=siblings"])
