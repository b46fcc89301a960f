"""JPEG (in)compressibility rewards, as in ddpo-pytorch: the size of a quality-95 JPEG in kB.

Each image is rounded to 8 bits, encoded with PIL at quality 95, and scored ``-size_kb``
(compressibility) or ``+size_kb`` (incompressibility), with 1 kB = 1000 bytes. No weights;
deterministic for a given Pillow/libjpeg build.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from treegrpo.rewards.base import BatchedReward


def jpeg_size_kb(image: torch.Tensor, quality: int = 95) -> float:
    """Bytes / 1000 of one [3, H, W] image in [0, 1] saved as a JPEG of the given quality."""
    array = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    pil = Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class JpegReward(BatchedReward):
    """``sign * size_kb`` of a quality-``quality`` JPEG; runs on CPU whatever ``device`` says."""

    def __init__(self, *, sign: float, name: str, quality: int = 95, batch_size: int = 64, **options: Any) -> None:
        options.pop("device", None)
        options.pop("dtype", None)
        if options:
            raise TypeError(f"unknown option(s) for {name}: {sorted(options)}")
        super().__init__(device="cpu", batch_size=batch_size)
        self.sign = float(sign)
        self.name = name
        self.quality = int(quality)

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        sizes = [jpeg_size_kb(image, self.quality) for image in images]
        return self.sign * torch.tensor(sizes, dtype=torch.float32)


def JpegCompressibility(**options: Any) -> JpegReward:
    """Smaller JPEG -> higher reward (``-size_kb``)."""
    return JpegReward(sign=-1.0, name="jpeg_compressibility", **options)


def JpegIncompressibility(**options: Any) -> JpegReward:
    """Larger JPEG -> higher reward (``+size_kb``)."""
    return JpegReward(sign=1.0, name="jpeg_incompressibility", **options)
