"""Multi-reward arithmetic: weighted sum with logged components, MixGRPO's group-normalised sum."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from treegrpo.rewards.multi import MultiReward, advantage_sum, group_normalize, weighted_sum


class _Fixed:
    """A fake reward returning preset scores, counting calls."""

    def __init__(self, name: str, values: list[float]) -> None:
        self.name = name
        self.values = torch.tensor(values)
        self.calls = 0

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        return self.values[: images.shape[0]]


def test_weighted_sum_and_components() -> None:
    a, b = _Fixed("a", [1.0, 2.0, 3.0]), _Fixed("b", [10.0, 0.0, -10.0])
    multi = MultiReward({"a": a, "b": b}, {"a": 2.0, "b": 0.5})
    images = torch.zeros(3, 3, 4, 4)
    total = multi(images, ["p"] * 3)
    torch.testing.assert_close(total, torch.tensor([2 + 5.0, 4 + 0.0, 6 - 5.0]))
    assert set(multi.last_components) == {"a", "b"}
    torch.testing.assert_close(multi.last_components["b"], torch.tensor([10.0, 0.0, -10.0]))
    comps = multi.components(images, ["p"] * 3)
    torch.testing.assert_close(multi.combine(comps), total)
    assert a.calls == 2 and b.calls == 2


def test_default_weights_and_errors() -> None:
    multi = MultiReward({"a": _Fixed("a", [1.0, 2.0]), "b": _Fixed("b", [3.0, 4.0])})
    torch.testing.assert_close(multi(torch.zeros(2, 3, 2, 2), ["x", "y"]), torch.tensor([4.0, 6.0]))
    with pytest.raises(ValueError, match="must name exactly"):
        MultiReward({"a": _Fixed("a", [1.0])}, {"b": 1.0})
    with pytest.raises(ValueError, match=r"returned scores of shape \(1,\) for 2 images"):
        MultiReward({"a": _Fixed("a", [1.0])})(torch.zeros(2, 3, 2, 2), ["x", "y"])
    with pytest.raises(KeyError, match="no scores"):
        weighted_sum({"a": torch.ones(2)}, {"a": 1.0, "c": 1.0})


def test_group_normalize_by_hand() -> None:
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0, 0.0])
    groups = torch.tensor([7, 7, 2, 2, 2, 2])
    out = group_normalize(scores, groups)
    # group 7: mean 2, population std 1 -> [-1, 1]
    torch.testing.assert_close(out[:2], torch.tensor([-1.0, 1.0]), rtol=0, atol=1e-6)
    # group 2: mean 7.5, population std sqrt(18.75)
    std = (((torch.tensor([10.0, 10, 10, 0]) - 7.5) ** 2).mean()).sqrt()
    torch.testing.assert_close(out[2:], (torch.tensor([10.0, 10, 10, 0]) - 7.5) / (std + 1e-8))
    # a constant group gives zeros, not NaN
    assert torch.equal(group_normalize(torch.full((3,), 5.0), torch.zeros(3, dtype=torch.long)), torch.zeros(3))


def test_advantage_sum_normalises_each_component_first() -> None:
    groups = torch.tensor([0, 0, 1, 1])
    comps = {"hps": torch.tensor([0.30, 0.32, 0.25, 0.21]), "aes": torch.tensor([5.0, 7.0, 6.0, 6.5])}
    weights = {"hps": 1.0, "aes": 0.5}
    got = advantage_sum(comps, weights, groups)
    # every two-member group normalises to [-1, +1] (or [+1, -1])
    hps = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    aes = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    torch.testing.assert_close(got, hps + 0.5 * aes, rtol=0, atol=1e-5)
    # in group 1 the plain sum follows the large-scale aesthetic score, the normalised one does not
    plain = weighted_sum(comps, weights)
    assert plain[3] > plain[2] and got[2] > got[3]
    with pytest.raises(ValueError, match="group_ids"):
        advantage_sum(comps, weights, torch.tensor([0, 0, 1]))


def test_from_names_builds_registered_rewards() -> None:
    multi = MultiReward.from_names(
        {"jpeg_compressibility": 1.0, "jpeg_incompressibility": 0.5},
        options={"jpeg_incompressibility": {"quality": 80}},
        batch_size=2,
    )
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    total = multi(images, ["a", "b", "c"])
    comps = multi.last_components
    torch.testing.assert_close(total, comps["jpeg_compressibility"] + 0.5 * comps["jpeg_incompressibility"])
    assert multi.rewards["jpeg_incompressibility"].quality == 80  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no weight"):
        MultiReward.from_names({"jpeg_compressibility": 1.0}, options={"hpsv2": {}})
