"""The shapes generator and the ShapesReward agree, are deterministic, and split prompts cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from treegrpo.demo import shapes
from treegrpo.demo.reward import COMPONENTS, ShapesReward
from treegrpo.demo.shapes import Caption, Placed, Thing


def _canvas(placed: list[Placed], background: str = "black") -> torch.Tensor:
    """A hand-placed scene as a [1, 3, 32, 32] batch."""
    return torch.from_numpy(shapes.render(placed, background))[None]


def _score(image: torch.Tensor, prompt: str) -> float:
    """Default reward of one image."""
    return float(ShapesReward()(image, [prompt])[0])


def test_captions_round_trip_and_count() -> None:
    caps = shapes.all_captions()
    assert len(caps) == len({c.text for c in caps}) == 492
    for c in caps:
        assert shapes.parse_caption(c.text) == c
    assert shapes.parse_caption("  Two RED circles. ") == Caption("count", Thing("red", "circle"), count=2)
    with pytest.raises(ValueError):
        shapes.parse_caption("a purple hexagon")


def test_generate_shapes_and_determinism() -> None:
    images, captions = shapes.generate(64, seed=3)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    again, captions_again = shapes.generate(64, seed=3)
    assert torch.equal(images, again) and captions == captions_again
    other, _ = shapes.generate(64, seed=4)
    assert not torch.equal(images, other)
    assert {shapes.parse_caption(c).kind for c in captions} == {"count", "side", "relation"}


def test_train_and_heldout_are_disjoint() -> None:
    train = {c.text for c in shapes.split_captions("train")}
    held = {c.text for c in shapes.split_captions("heldout")}
    assert train and held and not train & held
    assert len(train) + len(held) == 492
    assert set(shapes.train_prompts(500, seed=1)) <= train
    assert set(shapes.heldout_prompts(500, seed=1)) <= held
    assert shapes.heldout_prompts(16, seed=2) == shapes.heldout_prompts(16, seed=2)
    _, captions = shapes.generate(200, seed=0)
    assert set(captions) <= train


def test_composition_prompts_are_counts_of_two_or_three_and_relations() -> None:
    """``groups`` filters by prompt group; all groups reproduce the default draw (same prompts as before)."""
    every = shapes.heldout_prompts(300, seed=5)
    assert shapes.heldout_prompts(300, seed=5, groups=shapes.PROMPT_GROUPS) == every
    assert {shapes.caption_group(shapes.parse_caption(p)) for p in every} == set(shapes.PROMPT_GROUPS)
    for draw in (shapes.train_prompts(400, seed=1, groups=shapes.COMPOSITION_GROUPS),
                 shapes.heldout_prompts(400, seed=1, groups=shapes.COMPOSITION_GROUPS)):
        captions = [shapes.parse_caption(p) for p in draw]
        assert {shapes.caption_group(c) for c in captions} == {"count", "relation"}
        assert all(c.kind == "relation" or (c.kind == "count" and c.count >= 2) for c in captions)
    held = {c.text for c in shapes.split_captions("heldout")}
    assert set(shapes.heldout_prompts(400, seed=1, groups=shapes.COMPOSITION_GROUPS)) <= held
    assert not set(shapes.train_prompts(400, seed=1, groups=shapes.COMPOSITION_GROUPS)) & held
    with pytest.raises(ValueError, match="non-empty subset"):
        shapes.train_prompts(4, groups=("one_object", "colour"))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_generated_images_score_full_marks(split: str) -> None:
    images, captions = shapes.generate(300, seed=7, split=split)
    reward = ShapesReward()
    scores = reward(images, captions)
    assert scores.dtype == torch.float32 and scores.shape == (300,)
    assert float(scores.min()) == pytest.approx(1.0)
    comps = reward.components(images, captions)
    assert set(comps) == set(COMPONENTS)


def test_objects_never_touch() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for caption in shapes.all_captions()[:60]:
        placed = shapes.layout(caption, rng)
        masks = [shapes.object_mask(p.thing.shape, p.cx, p.cy, p.size) for p in placed]
        union = np.any(masks, axis=0)
        _, num = ndimage.label(union, structure=np.ones((3, 3)))
        assert num == len(placed), caption.text


def test_wrong_colour_or_count_loses_marks() -> None:
    rng = np.random.default_rng(1)
    two_red = _canvas(shapes.layout(shapes.parse_caption("two red circles"), rng))
    assert _score(two_red, "two red circles") == pytest.approx(1.0)
    assert _score(two_red, "two blue circles") < 0.2
    assert _score(two_red, "three red circles") < 0.9
    assert _score(two_red, "one red circle") < 0.9
    assert _score(two_red, "two red squares") < 1.0


def test_hand_drawn_scenes() -> None:
    reward = ShapesReward()
    blank = torch.zeros(1, 3, 32, 32)
    assert _score(blank, "a red circle on the left") == 0.0
    assert _score(torch.ones(1, 3, 32, 32), "two red circles") == 0.0
    left = _canvas([Placed(Thing("blue", "circle"), 8.0, 16.0, 8)], "white")
    right = _canvas([Placed(Thing("blue", "circle"), 24.0, 16.0, 8)], "white")
    assert _score(left, "a blue circle on the left") == pytest.approx(1.0)
    wrong_side = reward.components(right, ["a blue circle on the left"])
    assert float(wrong_side["position"][0]) == 0.0 and float(wrong_side["colour"][0]) == 1.0
    assert 0.5 < _score(right, "a blue circle on the left") < 1.0
    square = _canvas([Placed(Thing("red", "square"), 16.0, 16.0, 10)])
    triangle = _canvas([Placed(Thing("red", "triangle"), 16.0, 16.0, 10)])
    assert float(reward.components(square, ["one red circle"])["shape"][0]) == 0.0
    assert float(reward.components(triangle, ["one red triangle"])["shape"][0]) == 1.0
    stacked = _canvas([Placed(Thing("green", "triangle"), 16.0, 8.0, 8), Placed(Thing("yellow", "circle"), 16.0, 24.0, 8)])
    assert _score(stacked, "a green triangle above a yellow circle") == pytest.approx(1.0)
    flipped = reward.components(stacked, ["a green triangle below a yellow circle"])
    assert float(flipped["position"][0]) == 0.0
    assert torch.isnan(reward.components(stacked, ["one green triangle"])["position"]).all()


def test_reward_is_deterministic_and_weighted() -> None:
    images, captions = shapes.generate(64, seed=11)
    noisy = (0.6 * images + 0.4 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    reward = ShapesReward()
    assert torch.equal(reward(noisy, captions), reward(noisy, captions))
    colour_only = ShapesReward(colour=1.0, count=0.0, shape=0.0, position=0.0, clean=0.0, device="cpu")
    assert torch.equal(colour_only(noisy, captions), reward.components(noisy, captions)["colour"])
    with pytest.raises(ValueError):
        ShapesReward(colour=-1.0)
    with pytest.raises(ValueError):
        reward(images, captions[:3])
    shuffled = captions[1:] + captions[:1]
    assert float(reward(images, shuffled).mean()) < 0.6


def test_reward_accepts_larger_images() -> None:
    images, captions = shapes.generate(16, seed=5)
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")
    assert float(ShapesReward()(big, captions).min()) == pytest.approx(1.0)
