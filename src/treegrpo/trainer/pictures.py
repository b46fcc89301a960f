"""Pictures people read: image grids with each image's prompt (and reward) written under it.

The raw grid (``image_grid``) stays for TensorBoard and the demo; the captioned one is saved
beside it (``samples/step-NNNNNN-captioned.png``, ``treegrpo sample``'s ``OUT-captioned.png``).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

TILE = 192
"""Smallest tile side in pixels (tiny images are enlarged so the captions stay legible)."""

CAPTION_LINES = 3
"""Lines of caption text under each image (longer prompts are cut with an ellipsis)."""


def captions_for(prompts: Sequence[str], scores: Optional[Sequence[float]] = None) -> list[str]:
    """``"0.781  a red circle"`` per image (the prompt alone without scores)."""
    if scores is None:
        return list(prompts)
    return [f"{float(score):.3f}  {prompt}" for prompt, score in zip(prompts, scores)]


def captioned_grid(images: torch.Tensor, captions: Sequence[str], columns: Optional[int] = None) -> PILImage:
    """``[N, 3, H, W]`` images in [0, 1] as one PIL grid with each caption under its image."""
    from PIL import Image, ImageDraw, ImageFont

    n, _, h, w = images.shape
    columns = max(1, min(columns or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / columns)
    scale = max(1, math.ceil(TILE / max(h, w)))
    tile_w, tile_h = w * scale, h * scale
    font = ImageFont.load_default()
    line_h = 12
    chars = max(8, tile_w // 6)
    band = CAPTION_LINES * line_h + 6
    canvas = Image.new("RGB", (columns * (tile_w + 4), rows * (tile_h + band + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, columns)
        left, top = c * (tile_w + 4) + 2, r * (tile_h + band + 4) + 2
        array = (images[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        tile = Image.fromarray(np.ascontiguousarray(array)).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        canvas.paste(tile, (left, top))
        lines = textwrap.wrap(captions[i] if i < len(captions) else "", width=chars) or [""]
        if len(lines) > CAPTION_LINES:
            lines = lines[:CAPTION_LINES]
            lines[-1] = lines[-1][: max(0, chars - 3)] + "..."
        for k, line in enumerate(lines):
            draw.text((left + 2, top + tile_h + 3 + k * line_h), line, fill="black", font=font)
    return canvas


def save_captioned(images: torch.Tensor, captions: Sequence[str], file: Path, columns: Optional[int] = None) -> Path:
    """Write :func:`captioned_grid` as PNG; returns the file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(images, captions, columns).save(file)
    return file


def captioned_name(file: Path) -> Path:
    """``grid.png`` -> ``grid-captioned.png`` (beside the raw grid)."""
    return file.with_name(f"{file.stem}-captioned{file.suffix or '.png'}")

