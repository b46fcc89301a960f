"""JPEG rewards (ddpo-pytorch's definition), the registry and the shared RewardFn behaviour."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from treegrpo.rewards import available_rewards, get_reward, register_reward
from treegrpo.rewards.base import RewardFn, resolve_dtype


def _flat_and_noise() -> torch.Tensor:
    flat = torch.full((3, 64, 64), 0.5)
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    return torch.stack([flat, noise])


def test_flat_image_is_more_compressible_than_noise() -> None:
    images = _flat_and_noise()
    comp = get_reward("jpeg_compressibility")(images, ["", ""])
    incomp = get_reward("jpeg_incompressibility")(images, ["", ""])
    assert comp[0] > comp[1]
    assert incomp[1] > incomp[0]
    assert torch.equal(comp, -incomp)
    assert comp.dtype == torch.float32 and comp.shape == (2,)


def test_scores_are_deterministic_and_batch_independent() -> None:
    images = torch.rand(5, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    one = get_reward("jpeg_incompressibility", batch_size=1)(images, ["p"] * 5)
    many = get_reward("jpeg_incompressibility", batch_size=4)(images, ["p"] * 5)
    assert torch.equal(one, many)
    assert torch.equal(one, get_reward("jpeg_incompressibility")(images, ["p"] * 5))


def test_matches_ddpo_hand_computation() -> None:
    """ddpo-pytorch: uint8 = (x * 255).round(), PIL JPEG quality 95, size = bytes / 1000."""
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    array = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=95)
    expected = buffer.tell() / 1000
    assert get_reward("jpeg_incompressibility")(image, ["x"]).item() == pytest.approx(expected, rel=1e-6)


def test_reward_fn_protocol_and_input_checks() -> None:
    reward = get_reward("jpeg_compressibility")
    assert isinstance(reward, RewardFn) and reward.name == "jpeg_compressibility"
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(torch.rand(2, 3, 8, 8), ["only one"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(3, 8, 8), ["x"])
    with pytest.raises(ValueError, match="floating point"):
        reward(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["x"])
    assert reward(torch.rand(0, 3, 8, 8), []).shape == (0,)
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="'int3' is not supported; use one of fp32, bf16, fp16"):
        resolve_dtype("int3")


def test_registry_names_and_suggestions() -> None:
    names = set(available_rewards())
    assert {
        "hpsv2", "imagereward", "pickscore", "aesthetic", "clipscore",
        "jpeg_compressibility", "jpeg_incompressibility", "remote", "shapes",
    } <= names
    with pytest.raises(ValueError, match="did you mean 'pickscore'"):
        get_reward("pickscor")
    with pytest.raises(ValueError, match="did you mean 'hpsv2'"):
        get_reward("hps_v2")


def test_register_custom_reward() -> None:
    class Brightness:
        name = "brightness"

        def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3))

    register_reward("test_brightness", lambda **options: Brightness())
    reward = get_reward("test_brightness")
    assert reward(torch.ones(2, 3, 4, 4), ["a", "b"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="module:attribute"):
        register_reward("bad", "no_colon_here")
