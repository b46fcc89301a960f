"""A programmatic compositional reward for the shapes task: colour, count, shape, position.

Pixels are snapped to the nearest palette colour (the four object colours, black and white);
objects are the 4-connected components of one object colour whose area lies between
``min_area`` and ``max_area_fraction`` of the image. Each component of the score lies in [0, 1]:

- colour:   fraction of the caption's colours present as an object
- count:    1 - |n - k| / max(n, k), n objects of a colour found and k asked for (1 per colour
            for side and relation captions), averaged over the caption's colours
- shape:    fraction of the judged objects whose shape is right (all objects of the colour for
            count captions, the largest one per colour otherwise); a triangle is bottom-heavy
            (vertical asymmetry > 0.25), a square fills > 0.9 of its bounding box, a circle less
- position: side and relation captions only, a ramp on the box centres: full marks 3 px into
            the named half, or 4 px apart along the relation's axis; 0 when an object is missing
- clean:    share of object-coloured pixels that have a colour the caption asks for

The score is the weighted mean of the components that apply (position does not apply to count
captions). Generated images score 1.0; blank ones 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from treegrpo.demo.shapes import BACKGROUNDS, COLOURS, SIZE, Caption, parse_caption

COMPONENTS: tuple[str, ...] = ("colour", "count", "shape", "position", "clean")
OBJECT_COLOURS: tuple[str, ...] = tuple(COLOURS)
PALETTE = torch.tensor([*COLOURS.values(), *BACKGROUNDS.values()], dtype=torch.float32)
"""Palette rows: the object colours in OBJECT_COLOURS order, then black and white."""


@dataclass(frozen=True)
class Blob:
    """One detected object: colour, area (pixels), box centre (pixels) and judged shape."""

    colour: str
    area: int
    cx: float
    cy: float
    shape: str


def snap(images: torch.Tensor) -> np.ndarray:
    """Nearest palette index per pixel: images [B, 3, H, W] in [0, 1] -> int [B, H, W]."""
    x = torch.nan_to_num(images.detach().to("cpu", torch.float32)).clamp(0, 1)
    dist = ((x[:, None] - PALETTE[None, :, :, None, None]) ** 2).sum(dim=2)
    return dist.argmin(dim=1).numpy()


def judge_shape(mask: np.ndarray) -> str:
    """Classify a component cropped to its bounding box as circle, square or triangle."""
    h, w = mask.shape
    area = float(mask.sum())
    rows = np.arange(h, dtype=np.float64) + 0.5 - h / 2  # signed distance of rows from the box centre
    asymmetry = float((mask.sum(axis=1) * np.sign(rows)).sum()) / area
    if asymmetry > 0.25:
        return "triangle"
    return "square" if area / (h * w) > 0.9 else "circle"


def find_blobs(labels: np.ndarray, min_area: int, max_area: int) -> list[Blob]:
    """Objects of one snapped image [H, W] (palette indices)."""
    blobs: list[Blob] = []
    for index, colour in enumerate(OBJECT_COLOURS):
        components, num = ndimage.label(labels == index)
        if num == 0:
            continue
        areas = np.bincount(components.ravel(), minlength=num + 1)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None or not min_area <= areas[label] <= max_area:
                continue
            ys, xs = box
            blobs.append(
                Blob(
                    colour=colour,
                    area=int(areas[label]),
                    cx=(xs.start + xs.stop) / 2,
                    cy=(ys.start + ys.stop) / 2,
                    shape=judge_shape(components[box] == label),
                )
            )
    return blobs


def _count_score(found: int, wanted: int) -> float:
    """1 - |n - k| / max(n, k)."""
    return 1.0 - abs(found - wanted) / max(found, wanted, 1)


def _ramp(value: float, full: float) -> float:
    """0 at value <= 0, linear, 1 at value >= full."""
    return float(min(max(value / full, 0.0), 1.0))


def _largest(blobs: list[Blob], colour: str) -> Blob | None:
    """The largest object of a colour, if any."""
    mine = [b for b in blobs if b.colour == colour]
    return max(mine, key=lambda b: b.area) if mine else None


def _position(caption: Caption, blobs: list[Blob], width: int, scale: float) -> float:
    """Position score of a side or relation caption."""
    subject = _largest(blobs, caption.subject.colour)
    if subject is None:
        return 0.0
    if caption.kind == "side":
        into_half = width / 2 - subject.cx if caption.side == "left" else subject.cx - width / 2
        return _ramp(into_half, 3.0 * scale)
    assert caption.other is not None
    other = _largest(blobs, caption.other.colour)
    if other is None:
        return 0.0
    delta = {
        "above": other.cy - subject.cy,
        "below": subject.cy - other.cy,
        "to the left of": other.cx - subject.cx,
        "to the right of": subject.cx - other.cx,
    }[str(caption.relation)]
    return _ramp(delta, 4.0 * scale)


def _shape(caption: Caption, blobs: list[Blob]) -> float:
    """Shape score: share of judged objects with the right shape."""
    if caption.kind == "count":
        mine = [b for b in blobs if b.colour == caption.subject.colour]
        return sum(b.shape == caption.subject.shape for b in mine) / len(mine) if mine else 0.0
    things = [caption.subject] if caption.other is None else [caption.subject, caption.other]
    judged = [_largest(blobs, t.colour) for t in things]
    return sum(b is not None and b.shape == t.shape for b, t in zip(judged, things)) / len(things)


def score_components(labels: np.ndarray, caption: Caption, min_area: int, max_area: int) -> dict[str, float]:
    """Component scores of one snapped image [H, W]; position is NaN for count captions."""
    width = labels.shape[1]
    scale = width / SIZE
    blobs = find_blobs(labels, min_area, max_area)
    colours = caption.colours
    counts = [sum(b.colour == c for b in blobs) for c in colours]
    wanted = [caption.count] if caption.kind == "count" else [1] * len(colours)
    object_pixels = labels < len(OBJECT_COLOURS)
    asked_pixels = np.isin(labels, [OBJECT_COLOURS.index(c) for c in colours])
    total_object_pixels = int(object_pixels.sum())
    return {
        "colour": float(np.mean([n > 0 for n in counts])),
        "count": float(np.mean([_count_score(n, k) for n, k in zip(counts, wanted)])),
        "shape": _shape(caption, blobs),
        "position": float("nan") if caption.kind == "count" else _position(caption, blobs, width, scale),
        "clean": float(asked_pixels.sum()) / total_object_pixels if total_object_pixels else 0.0,
    }


class ShapesReward:
    """Programmatic reward of the shapes demo task; deterministic, CPU, no model."""

    name = "shapes"

    def __init__(
        self,
        colour: float = 0.3,
        count: float = 0.3,
        shape: float = 0.1,
        position: float = 0.2,
        clean: float = 0.1,
        min_area: int = 12,
        max_area_fraction: float = 0.25,
        device: object = None,
        dtype: object = None,
        batch_size: object = None,
    ) -> None:
        """Component weights (need not sum to 1), object size limits; device, dtype, batch_size ignored."""
        self.weights: dict[str, float] = {
            "colour": colour,
            "count": count,
            "shape": shape,
            "position": position,
            "clean": clean,
        }
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")
        self.min_area = min_area
        self.max_area_fraction = max_area_fraction

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per-component scores, each float32 [B]; position is NaN for count prompts (use nanmean)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
            raise ValueError(f"expected images [B, 3, H, W] with B = {len(prompts)}, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        labels = snap(images)
        height, width = labels.shape[1:]
        scale = width / SIZE
        min_area = max(1, round(self.min_area * scale * scale))
        max_area = int(self.max_area_fraction * height * width)
        rows = [
            score_components(lab, parse_caption(p), min_area, max_area) for lab, p in zip(labels, prompts)
        ]
        return {k: torch.tensor([r[k] for r in rows], dtype=torch.float32) for k in COMPONENTS}

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted mean of the applicable (non-NaN) components: float32 [B]."""
        num = torch.zeros_like(components["colour"])
        den = torch.zeros_like(components["colour"])
        for key, weight in self.weights.items():
            value = components[key]
            applies = ~torch.isnan(value)
            num += torch.where(applies, value, torch.zeros_like(value)) * weight
            den += applies.float() * weight
        return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores float32 [B] in [0, 1] of images [B, 3, H, W] in [0, 1] for their prompts."""
        return self.combine(self.components(images, prompts))

    def component_means(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """Mean of each component over the batch (NaN-aware) and of the total, for logging."""
        comps = self.components(images, prompts)
        out = {k: float(torch.nanmean(v)) if not torch.isnan(v).all() else float("nan") for k, v in comps.items()}
        out["total"] = float(self.combine(comps).mean())
        return out
