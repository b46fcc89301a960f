"""PIL's bicubic resize of 8-bit images, reproduced bit-exactly in torch (batched, any device).

Pillow resamples an 8-bit image in two separable passes. Up to Pillow 12 the horizontal pass runs
first; Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
and by more than twice as many pixels as the width does (``h - new_h > 2 * (w - new_w)``, found by
testing Pillow 13.0 on 400 random shapes: this rule, and no other tried, fits all of them). The
order matters by a level or more on hard edges. Each pass uses
fixed-point weights (the Keys cubic, a = -0.5, widened by the scale when downscaling, normalised per
output pixel, then scaled by 2**22 and rounded away from zero), adds 2**21 and shifts right by 22,
clamping to [0, 255]. The clamp and rounding *between* the passes matter: on hard edges the cubic
overshoots, and a float resize that rounds once at the end lands far from PIL (benchmarks/RESULTS.md).

Sums of integer weights times 8-bit values stay below 2**53, so float64 arithmetic is exact here.
"""

from __future__ import annotations

from functools import lru_cache

import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c: fixed-point bits of the 8-bit weights
BICUBIC_SUPPORT = 2.0
_A = -0.5


def bicubic_kernel(x: float) -> float:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's ``bicubic_filter``)."""
    x = abs(x)
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * _A
    return 0.0


def _to_fixed_point(weight: float) -> int:
    """Scale by 2**PRECISION_BITS and round half away from zero (C's cast of ``w * s ± 0.5``)."""
    scaled = weight * (1 << PRECISION_BITS)
    return int(scaled - 0.5) if weight < 0 else int(scaled + 0.5)


@lru_cache(maxsize=64)
def _fixed_point_weights(in_size: int, out_size: int) -> tuple[tuple[int, ...], ...]:
    """Row ``i``: integer weights of every input pixel for output pixel ``i`` (cached per size pair)."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    rows = []
    for out_index in range(out_size):
        center = (out_index + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), in_size)
        inverse = 1.0 / filter_scale
        raw = [bicubic_kernel((x - center + 0.5) * inverse) for x in range(first, stop)]
        total = sum(raw)  # Pillow sums left to right, in double
        row = [0] * in_size
        for offset, weight in enumerate(raw):
            row[first + offset] = _to_fixed_point(weight / total if total != 0.0 else weight)
        rows.append(tuple(row))
    return tuple(rows)


def pil_bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """``[out_size, in_size]`` float64 matrix of Pillow's fixed-point bicubic weights (integers)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be >= 1, got {in_size} -> {out_size}")
    return torch.tensor(_fixed_point_weights(int(in_size), int(out_size)), dtype=torch.float64)


def _pass(levels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One fixed-point pass along the last axis: ``clip8((sum + 2**21) >> 22)`` on integer levels."""
    total = levels @ weights.t() + float(1 << (PRECISION_BITS - 1))
    return torch.floor(total / float(1 << PRECISION_BITS)).clamp_(0.0, 255.0)


def installed_pillow_major() -> int:
    """Major version of the installed Pillow (0 when Pillow is absent)."""
    try:
        import PIL
    except ImportError:
        return 0
    return int(str(PIL.__version__).split(".")[0])


def vertical_first(height: int, width: int, new_height: int, new_width: int, pillow_major: int) -> bool:
    """Whether Pillow runs the vertical pass first for this resize (only Pillow >= 13 ever does)."""
    if pillow_major < 13:
        return False
    return new_height < height and (height - new_height) > 2 * (width - new_width)


def pil_resize(images: torch.Tensor, size: tuple[int, int], *, pillow_major: int | None = None) -> torch.Tensor:
    """Bicubic resize of ``[..., H, W]`` images in [0, 1] to ``size = (h, w)``, exactly as Pillow.

    The input is rounded to 8 bits first (as converting to a PIL image does); the output lies on
    the 1/255 grid. A pass whose length does not change is skipped, as in Pillow. The pass order
    follows ``pillow_major`` (default: the installed Pillow), so scores match the Pillow in use.
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    new_height, new_width = int(size[0]), int(size[1])
    major = installed_pillow_major() if pillow_major is None else int(pillow_major)
    device = images.device if images.device.type in ("cpu", "cuda") else torch.device("cpu")  # no float64 on MPS
    levels = (images.detach().to(device, torch.float64) * 255.0).round().clamp(0.0, 255.0)

    def horizontal(x: torch.Tensor) -> torch.Tensor:
        return x if new_width == width else _pass(x, pil_bicubic_weights(width, new_width).to(device))

    def vertical(x: torch.Tensor) -> torch.Tensor:
        if new_height == height:
            return x
        return _pass(x.transpose(-1, -2), pil_bicubic_weights(height, new_height).to(device)).transpose(-1, -2)

    if vertical_first(height, width, new_height, new_width, major):
        levels = horizontal(vertical(levels))
    else:
        levels = vertical(horizontal(levels))
    return (levels / 255.0).to(images.device, torch.float32).contiguous()
