"""Procedurally generated shapes: captions, their parsed form, and seeded 32x32 renderings.

Every image holds 1-3 non-touching objects (circle, square, triangle; red, green, blue, yellow)
on a black or white background and matches its caption exactly. Captions come in three kinds:

- count:    "two red circles"                      (1-3 identical objects)
- side:     "a blue square on the left"            (one object, wholly in that half)
- relation: "a green triangle above a yellow circle" (two objects of different colours)

The caption set is finite (492 captions) and split into train and held-out prompts by a hash
of the caption text, so held-out prompts are compositions the base model never saw.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

SIZE = 32
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
NUMBERS: tuple[str, ...] = ("one", "two", "three")
SIDES: tuple[str, ...] = ("left", "right")
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
KINDS: tuple[str, ...] = ("count", "side", "relation")
OBJECT_SIZES: tuple[int, ...] = (7, 8, 9, 10, 11)
"""Bounding-box side of a drawn object in pixels."""
GAP = 2
"""Minimum number of background pixels between two objects' bounding boxes."""
HELDOUT_FRACTION = 0.2

Kind = Literal["count", "side", "relation"]


@dataclass(frozen=True)
class Thing:
    """One kind of object: a colour and a shape."""

    colour: str
    shape: str


@dataclass(frozen=True)
class Caption:
    """A parsed caption: what the reward checks and what the generator draws."""

    kind: Kind
    subject: Thing
    count: int = 1
    side: str | None = None
    relation: str | None = None
    other: Thing | None = None

    @property
    def text(self) -> str:
        """The caption as a string (inverse of :func:`parse_caption`)."""
        return caption_text(self)

    @property
    def colours(self) -> tuple[str, ...]:
        """Colours the caption asks for, subject first."""
        return (self.subject.colour,) if self.other is None else (self.subject.colour, self.other.colour)


def _noun(thing: Thing, plural: bool = False) -> str:
    """'red circle' or 'red circles'."""
    return f"{thing.colour} {thing.shape}{'s' if plural else ''}"


def caption_text(caption: Caption) -> str:
    """Render a parsed caption as text."""
    if caption.kind == "count":
        return f"{NUMBERS[caption.count - 1]} {_noun(caption.subject, caption.count > 1)}"
    if caption.kind == "side":
        return f"a {_noun(caption.subject)} on the {caption.side}"
    assert caption.other is not None
    return f"a {_noun(caption.subject)} {caption.relation} a {_noun(caption.other)}"


_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_COUNT_RE = re.compile(rf"^({'|'.join(NUMBERS)}) ({_COLOUR}) ({_SHAPE})s?$")
_SIDE_RE = re.compile(rf"^a ({_COLOUR}) ({_SHAPE}) on the ({'|'.join(SIDES)})$")
_RELATION_RE = re.compile(rf"^a ({_COLOUR}) ({_SHAPE}) ({'|'.join(RELATIONS)}) a ({_COLOUR}) ({_SHAPE})$")


def parse_caption(text: str) -> Caption:
    """Parse a caption of this task (case and surrounding blanks ignored); ValueError otherwise."""
    norm = " ".join(text.lower().strip().rstrip(".").split())
    if m := _COUNT_RE.match(norm):
        return Caption("count", Thing(m[2], m[3]), count=NUMBERS.index(m[1]) + 1)
    if m := _SIDE_RE.match(norm):
        return Caption("side", Thing(m[1], m[2]), side=m[3])
    if m := _RELATION_RE.match(norm):
        return Caption("relation", Thing(m[1], m[2]), relation=m[3], other=Thing(m[4], m[5]))
    raise ValueError(f"not a shapes caption: {text!r}")


def all_captions() -> list[Caption]:
    """Every caption of the task, in a fixed order."""
    things = [Thing(c, s) for c in COLOURS for s in SHAPES]
    out = [Caption("count", t, count=n) for t in things for n in (1, 2, 3)]
    out += [Caption("side", t, side=side) for t in things for side in SIDES]
    out += [
        Caption("relation", a, relation=rel, other=b)
        for a in things
        for b in things
        if a.colour != b.colour
        for rel in RELATIONS
    ]
    return out


def is_heldout(text: str) -> bool:
    """Whether a caption belongs to the held-out split (a stable hash of its text)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION


def split_captions(split: str) -> list[Caption]:
    """Captions of one split: "train", "heldout" or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}")
    caps = all_captions()
    if split == "all":
        return caps
    return [c for c in caps if is_heldout(c.text) == (split == "heldout")]


PROMPT_GROUPS: tuple[str, ...] = ("one_object", "count", "relation")
"""Prompt groups: one object ("one red circle", "a blue square on the left"), two or three identical
objects, two objects in a relation."""
COMPOSITION_GROUPS: tuple[str, ...] = ("count", "relation")
"""The groups that need composition (counting, placing one object relative to another)."""


def caption_group(caption: Caption) -> str:
    """Which of :data:`PROMPT_GROUPS` a caption belongs to."""
    if caption.kind == "relation":
        return "relation"
    return "one_object" if caption.kind == "side" or caption.count == 1 else "count"


def _sample_captions(n: int, rng: np.random.Generator, split: str, groups: Sequence[str] = PROMPT_GROUPS) -> list[Caption]:
    """Draw n captions of the given groups: a kind uniformly, then a caption of that kind uniformly."""
    unknown = set(groups) - set(PROMPT_GROUPS)
    if unknown or not groups:
        raise ValueError(f"prompt groups must be a non-empty subset of {PROMPT_GROUPS}, got {tuple(groups)}")
    chosen = [c for c in split_captions(split) if caption_group(c) in groups]
    by_kind = {k: [c for c in chosen if c.kind == k] for k in KINDS}
    kinds = [k for k in KINDS if by_kind[k]]
    out = []
    for _ in range(n):
        pool = by_kind[kinds[rng.integers(len(kinds))]]
        out.append(pool[rng.integers(len(pool))])
    return out


def _prompts(n: int, seed: int, split: str, groups: Sequence[str]) -> list[str]:
    """n caption strings of a split and prompt groups, seeded."""
    return [c.text for c in _sample_captions(n, np.random.default_rng(seed), split, groups)]


def train_prompts(n: int, seed: int = 0, groups: Sequence[str] = PROMPT_GROUPS) -> list[str]:
    """n training prompts (with repeats) of the given groups, seeded; disjoint from :func:`heldout_prompts`."""
    return _prompts(n, seed, "train", groups)


def heldout_prompts(n: int, seed: int = 0, groups: Sequence[str] = PROMPT_GROUPS) -> list[str]:
    """n held-out prompts (with repeats) of the given groups, seeded; never used in pretraining."""
    return _prompts(n, seed, "heldout", groups)


@dataclass(frozen=True)
class Placed:
    """An object placed on the canvas: its kind, bounding-box centre (pixels) and box side."""

    thing: Thing
    cx: float
    cy: float
    size: int


_YS, _XS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5


def object_mask(shape: str, cx: float, cy: float, size: int) -> np.ndarray:
    """Boolean [SIZE, SIZE] mask of one shape with bounding box ``size`` centred at (cx, cy)."""
    h = size / 2
    dx, dy = _XS - cx, _YS - cy
    inside_box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "square":
        return inside_box
    if shape == "circle":
        return inside_box & (dx * dx + dy * dy <= h * h + 0.25)
    if shape == "triangle":  # apex up, base at the bottom of the box
        return inside_box & (np.abs(dx) <= (dy + h) / 2 + 0.25)
    raise ValueError(f"unknown shape {shape!r}")


def _random_centre(size: int, rng: np.random.Generator, x_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """A pixel-aligned box centre keeping the box inside the canvas (and x inside x_range)."""
    half = size / 2
    lo, hi = half, SIZE - half
    xlo, xhi = (lo, hi) if x_range is None else (max(lo, x_range[0]), min(hi, x_range[1]))
    offset = 0.5 * (size % 2)  # odd boxes centre on a pixel centre, even ones on a pixel corner
    xs = np.arange(np.ceil(xlo - offset), np.floor(xhi - offset) + 1) + offset
    ys = np.arange(np.ceil(lo - offset), np.floor(hi - offset) + 1) + offset
    return float(xs[rng.integers(len(xs))]), float(ys[rng.integers(len(ys))])


def _apart(a: Placed, b: Placed) -> bool:
    """Whether two boxes are separated by at least GAP pixels along some axis."""
    need = (a.size + b.size) / 2 + GAP
    return abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


def _relation_holds(relation: str, a: Placed, b: Placed) -> bool:
    """Whether a (subject) stands in ``relation`` to b, clearly (dominant axis, >= 6 px)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy  # positive: b right of / below a
    if relation == "above":
        return dy >= 6 and abs(dx) <= dy
    if relation == "below":
        return -dy >= 6 and abs(dx) <= -dy
    if relation == "to the left of":
        return dx >= 6 and abs(dy) <= dx
    return -dx >= 6 and abs(dy) <= -dx


def layout(caption: Caption, rng: np.random.Generator, max_tries: int = 1000) -> list[Placed]:
    """Place the caption's objects at random, non-touching, satisfying its position terms."""
    for _ in range(max_tries):
        placed = _try_layout(caption, rng)
        if placed is not None:
            return placed
    raise RuntimeError(f"could not lay out {caption.text!r}")


def _try_layout(caption: Caption, rng: np.random.Generator) -> list[Placed] | None:
    """One random layout attempt; None if it breaks a constraint."""
    if caption.kind == "side":
        size = int(rng.choice(OBJECT_SIZES))
        half = size / 2  # the whole box lies in the named half
        x_range = (0.0, SIZE / 2 - half) if caption.side == "left" else (SIZE / 2 + half, float(SIZE))
        cx, cy = _random_centre(size, rng, x_range)
        return [Placed(caption.subject, cx, cy, size)]
    things = [caption.subject] * caption.count if caption.kind == "count" else [caption.subject, caption.other]
    placed: list[Placed] = []
    for thing in things:
        assert thing is not None
        size = int(rng.choice(OBJECT_SIZES))
        cx, cy = _random_centre(size, rng)
        new = Placed(thing, cx, cy, size)
        if not all(_apart(new, p) for p in placed):
            return None
        placed.append(new)
    if caption.kind == "relation" and not _relation_holds(str(caption.relation), placed[0], placed[1]):
        return None
    return placed


def render(placed: list[Placed], background: str) -> np.ndarray:
    """Draw placed objects: float32 [3, SIZE, SIZE] in [0, 1]."""
    img = np.empty((3, SIZE, SIZE), dtype=np.float32)
    img[:] = np.asarray(BACKGROUNDS[background], dtype=np.float32)[:, None, None]
    for p in placed:
        mask = object_mask(p.thing.shape, p.cx, p.cy, p.size)
        img[:, mask] = np.asarray(COLOURS[p.thing.colour], dtype=np.float32)[:, None]
    return img


def draw(caption: Caption | str, rng: np.random.Generator, background: str | None = None) -> np.ndarray:
    """A random image matching the caption: float32 [3, SIZE, SIZE] in [0, 1]."""
    cap = parse_caption(caption) if isinstance(caption, str) else caption
    placed = layout(cap, rng)
    bg = background if background is not None else ("black", "white")[int(rng.integers(2))]
    return render(placed, bg)


def generate(n: int, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """n seeded (image, caption) pairs: float32 images [n, 3, 32, 32] in [0, 1] and caption strings."""
    rng = np.random.default_rng(seed)
    caps = _sample_captions(n, rng, split)
    images = np.stack([draw(c, rng) for c in caps]) if n else np.zeros((0, 3, SIZE, SIZE), np.float32)
    return torch.from_numpy(images), [c.text for c in caps]
