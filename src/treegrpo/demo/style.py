"""A preference reward for the shapes task: the background's colour, which no caption asks for.

The shapes base learned black and white backgrounds in equal measure (its training images draw
either at random), so it meets a preference for one of them about half the time; a person sees
the difference at a glance; and the captions never mention it, so the compositional ``shapes``
reward can judge, untouched, whether faithfulness to the prompt survives the preference.

Background pixels are those nearest to black or white among the task's palette (object colours
excluded, so a yellow object never counts as white). The score is their mean brightness (the mean
of R, G, B) for ``background="white"``, one minus it for ``"black"``: 1 for a clean background of
the preferred colour, 0 for the other, between for grey or mixed ones; 0 when nothing is background.
"""

from __future__ import annotations

from typing import Sequence

import torch

from treegrpo.demo.reward import OBJECT_COLOURS, PALETTE

BACKGROUND_CHOICES: tuple[str, ...] = ("white", "black")


def background_mask(images: torch.Tensor) -> torch.Tensor:
    """Pixels nearest to black or white in the task's palette: bool ``[B, H, W]`` of images ``[B, 3, H, W]``."""
    dist = ((images[:, None] - PALETTE[None, :, :, None, None]) ** 2).sum(dim=2)
    return dist.argmin(dim=1) >= len(OBJECT_COLOURS)


def background_brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean brightness (mean of R, G, B) of each image's background pixels: float32 ``[B]`` (0 where none)."""
    mask = background_mask(images).float()
    brightness = images.mean(dim=1)
    pixels = mask.sum(dim=(1, 2))
    return torch.where(pixels > 0, (brightness * mask).sum(dim=(1, 2)) / pixels.clamp_min(1.0), torch.zeros_like(pixels))


class ShapesStyleReward:
    """The ``shapes_style`` reward: how much of the background has the preferred colour; deterministic, CPU."""

    name = "shapes_style"

    def __init__(self, background: str = "white", device: object = None, dtype: object = None,
                 batch_size: object = None) -> None:
        """``background``: the preferred colour, ``white`` or ``black``; device, dtype, batch_size are ignored."""
        if background not in BACKGROUND_CHOICES:
            raise ValueError(f"shapes_style background {background!r} is not supported; use 'white' or 'black'")
        self.background = background

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores float32 ``[B]`` in [0, 1] of images ``[B, 3, H, W]`` in [0, 1] (the prompts are not read)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
            raise ValueError(f"shapes_style expects images [B, 3, H, W] with B = {len(prompts)}, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"shapes_style expects floating-point images in [0, 1], got {images.dtype}")
        x = images.detach().to("cpu", torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("shapes_style got non-finite pixel values (NaN or inf); check the decoder's output")
        brightness = background_brightness(x.clamp(0, 1))
        return brightness if self.background == "white" else torch.where(
            background_mask(x.clamp(0, 1)).any(dim=(1, 2)), 1.0 - brightness, torch.zeros_like(brightness))
