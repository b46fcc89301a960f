"""The shapes task's preference reward ``shapes_style`` (the background's colour) on hand-made images."""

from __future__ import annotations

import pytest
import torch

from treegrpo.demo.shapes import draw
from treegrpo.demo.style import ShapesStyleReward, background_mask
from treegrpo.rewards import available_rewards, get_reward


def canvas(height: int, width: int, rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, height, width).clone()


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40), (7, 3)])
def test_clean_backgrounds_score_one_and_zero_on_any_size(height: int, width: int) -> None:
    white, black = canvas(height, width, (1, 1, 1)), canvas(height, width, (0, 0, 0))
    images, prompts = torch.stack([white, black]), ["two red circles", "a"]
    assert ShapesStyleReward()(images, prompts).tolist() == [1.0, 0.0]
    assert ShapesStyleReward(background="black")(images, prompts).tolist() == [0.0, 1.0]


def test_objects_are_not_background_and_yellow_is_not_white() -> None:
    image = canvas(32, 32, (1, 1, 1))
    image[:, 4:20, 4:20] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)  # a yellow square: near white, but an object colour
    image[:, 22:30, 2:30] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # a red bar
    mask = background_mask(image[None])[0]
    assert int(mask.sum()) == 32 * 32 - 16 * 16 - 8 * 28
    assert ShapesStyleReward()(image[None], ["x"]).item() == 1.0  # every background pixel is white
    on_black = image.clone()
    on_black[:, mask] = 0.0
    assert ShapesStyleReward()(on_black[None], ["x"]).item() == 0.0


def test_mixed_grey_and_hard_edges_score_in_between() -> None:
    half = canvas(20, 30, (0, 0, 0))
    half[:, :, :15] = 1.0  # left half white, right half black: a hard vertical edge
    grey = canvas(20, 30, (0.4, 0.4, 0.4))  # nearer black than white: background, brightness 0.4
    light = canvas(20, 30, (0.8, 0.8, 0.8))
    scores = ShapesStyleReward()(torch.stack([half, grey, light]), ["a", "b", "c"])
    assert scores.tolist() == pytest.approx([0.5, 0.4, 0.8])
    assert ShapesStyleReward(background="black")(torch.stack([half, grey]), ["a", "b"]).tolist() == pytest.approx([0.5, 0.6])


def test_nothing_but_objects_scores_zero_for_either_preference() -> None:
    red = canvas(16, 16, (1, 0, 0))[None]
    assert ShapesStyleReward()(red, ["a"]).item() == 0.0
    assert ShapesStyleReward(background="black")(red, ["a"]).item() == 0.0


def test_the_tasks_own_drawings_score_their_background() -> None:
    rng = __import__("numpy").random.default_rng(0)
    for background, expected in (("white", 1.0), ("black", 0.0)):
        image = torch.from_numpy(draw("a green triangle above a yellow circle", rng, background=background))
        assert ShapesStyleReward()(image[None], ["a green triangle above a yellow circle"]).item() == expected


@pytest.mark.parametrize(
    ("images", "prompts", "message"),
    [
        (torch.zeros(2, 3, 8, 8), ["one"], "expects images [B, 3, H, W] with B = 1, got (2, 3, 8, 8)"),
        (torch.zeros(1, 1, 8, 8), ["one"], "expects images [B, 3, H, W]"),
        (torch.zeros(3, 8, 8), ["one"], "expects images [B, 3, H, W]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["one"], "floating-point images"),
        (torch.full((1, 3, 8, 8), float("nan")), ["one"], "non-finite pixel values"),
    ],
)
def test_bad_input_is_a_one_line_error(images: torch.Tensor, prompts: list[str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        ShapesStyleReward()(images, prompts)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_registered_by_name_with_its_option_checked() -> None:
    assert "shapes_style" in available_rewards()
    reward = get_reward("shapes_style", background="black")
    assert reward(canvas(8, 8, (0, 0, 0))[None], ["a"]).item() == 1.0
    with pytest.raises(ValueError, match="use 'white' or 'black'"):
        get_reward("shapes_style", background="grey")
