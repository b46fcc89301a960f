"""Image preparation against its references: the PIL-exact bicubic against PIL itself on hard-edged,
non-square images; open_clip's ResizeMaxSize geometry (hpsv2) by hand; open_clip's text cleaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from treegrpo.rewards.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clip_preprocess,
    longest_side_shape,
    quantize_uint8,
    resize_longest_side_and_pad,
    resize_shortest_side,
)
from treegrpo.rewards.pil_resample import PRECISION_BITS, pil_bicubic_weights, pil_resize
from treegrpo.rewards.text_clean import open_clip_clean, pad_token_ids


def _hard_edged(height: int, width: int, seed: int) -> np.ndarray:
    """Black/white blocks, one-pixel stripes and a saturated colour band: maximal cubic overshoot."""
    g = np.random.default_rng(seed)
    blocks = (g.random((height // 4 + 1, width // 4 + 1, 3)) > 0.5).repeat(4, 0).repeat(4, 1)[:height, :width]
    image = blocks.astype(np.uint8) * 255
    image[:, ::7] = 255 - image[:, ::7]  # thin vertical lines
    image[height // 2 : height // 2 + 3] = (255, 0, 0)  # a hard red band
    return image


def _pil(array: np.ndarray, height: int, width: int) -> torch.Tensor:
    out = np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).float()


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize(
    "shape, size",
    [((61, 117), (224, 430)), ((300, 97), (692, 224)), ((203, 77), (29, 11)), ((96, 200), (62, 129)), ((50, 80), (50, 33))],
)
def test_pil_resize_equals_pil_on_hard_edges(shape: tuple[int, int], size: tuple[int, int]) -> None:
    """Up- and downscaling, non-square, one axis unchanged: every pixel equals PIL's, bit for bit."""
    array = _hard_edged(*shape, seed=sum(shape))
    ours = pil_resize(_tensor(array), size)[0] * 255.0
    torch.testing.assert_close(ours, _pil(array, *size), rtol=0, atol=1e-4)


def test_float_resize_rounded_once_is_far_from_pil_on_hard_edges() -> None:
    """What the exact resampler fixes: a float resize, rounded at the end, is many levels off."""
    array = _hard_edged(96, 200, seed=1)
    size = (62, 129)
    float_resize = quantize_uint8(torch.nn.functional.interpolate(
        _tensor(array), size=size, mode="bicubic", align_corners=False, antialias=True
    ))[0] * 255.0
    assert (float_resize - _pil(array, *size)).abs().max() > 5.0


def test_fixed_point_weights_by_hand() -> None:
    """Upscaling 2x: output pixel 1 is centred at 0.75, inputs 0, 1, 2 at 0.5, 1.5, 2.5 (distances
    0.25, 0.75, 1.75); input -1 would be at 1.25 but lies outside the image, so three taps."""
    weights = pil_bicubic_weights(4, 8)
    one = 1 << PRECISION_BITS
    a = -0.5
    def cubic(x: float) -> float:
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x < 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    taps = [cubic(d) for d in (0.25, 0.75, 1.75)]
    expected = [int(t / sum(taps) * one + (0.5 if t >= 0 else -0.5)) for t in taps]
    assert weights[1, :3].tolist() == expected and weights[1, 3] == 0
    # every row sums to 1.0 in fixed point up to rounding of each tap
    assert (weights.sum(dim=1) - one).abs().max() <= 4


def test_clip_preprocess_equals_pil_resize_then_crop() -> None:
    """The PIL path of clip_preprocess: PIL resize (short side 32), floor centre crop, normalise."""
    array = _hard_edged(75, 101, seed=3)
    out = clip_preprocess(_tensor(array), 32, crop_rounding="floor", pil_resample=True)
    ref = _pil(array, 32, 43)[:, :, 5:37] / 255.0  # int(32 * 101 / 75) = 43, offset (43 - 32) // 2 = 5
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(out[0], (ref - mean) / std, rtol=0, atol=1e-5)


def test_resize_longest_side_and_pad_geometry_by_hand() -> None:
    """open_clip's ResizeMaxSize: 40x48 -> 27x32 (round(26.67)), pad 5 rows as 2 above, 3 below;
    96x80 -> 32x27, pad 5 columns as 2 left, 3 right; a constant image stays constant inside."""
    assert longest_side_shape(40, 48, 32) == (27, 32)
    assert longest_side_shape(96, 80, 32) == (32, 27)
    assert longest_side_shape(100, 300, 224) == (75, 224)  # round(74.67)
    assert longest_side_shape(1, 4, 2) == (0, 2) or longest_side_shape(1, 4, 2) == (1, 2)
    flat = torch.full((1, 3, 40, 48), 0.6)
    out = resize_longest_side_and_pad(flat, 32)
    assert out.shape == (1, 3, 32, 32)
    assert (out[..., :2, :] == 0).all() and (out[..., 29:, :] == 0).all()
    torch.testing.assert_close(out[..., 2:29, :], torch.full((1, 3, 27, 32), 0.6), rtol=0, atol=1e-5)
    tall = resize_longest_side_and_pad(torch.full((2, 3, 96, 80), 0.3), 32)
    assert (tall[..., :, :2] == 0).all() and (tall[..., :, 29:] == 0).all() and (tall[..., :, 2:29] > 0.29).all()
    # a square image is only resized (no padding), as the shortest-side path would do
    square = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resize_longest_side_and_pad(square, 32), resize_shortest_side(square, 32))


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("A  Photo\tof\n\na CAT", "a photo of a cat"),
        ("fish &amp;amp; chips", "fish & chips"),  # escaped twice: unescaped twice
        ("ＳＤ３ ﬁne", "sd3 fine"),  # full-width letters, ligature (ftfy)
        ("  \u3000 leading and trailing \u00a0 ", "leading and trailing"),
        ("", ""),
    ],
)
def test_open_clip_clean(raw: str, clean: str) -> None:
    pytest.importorskip("ftfy")
    assert open_clip_clean(raw) == clean


def test_pad_token_ids_pads_with_zero_and_rejects_overlong() -> None:
    assert pad_token_ids([[5, 6], [7]], 4).tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]
    with pytest.raises(ValueError, match="truncate first"):
        pad_token_ids([[1, 2, 3]], 2)


def test_pass_order_follows_pillow_on_random_shapes() -> None:
    """Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width's
    pixels; 40 random shapes (up, down, mixed) all equal PIL; major 12 equals PIL's explicit
    horizontal-then-vertical two-step resize."""
    g = np.random.default_rng(7)
    for _ in range(40):
        h, w = (int(v) for v in g.integers(6, 90, 2))
        nh, nw = (int(v) for v in g.integers(2, 70, 2))
        array = _hard_edged(h, w, seed=h * w)
        ours = pil_resize(_tensor(array), (nh, nw))[0] * 255.0
        torch.testing.assert_close(ours, _pil(array, nh, nw), rtol=0, atol=1e-4, msg=f"{h}x{w} -> {nh}x{nw}")
    array = _hard_edged(203, 77, seed=0)
    two_step = np.asarray(Image.fromarray(array).resize((11, 203), Image.BICUBIC).resize((11, 29), Image.BICUBIC))
    old = pil_resize(_tensor(array), (29, 11), pillow_major=12)[0] * 255.0
    torch.testing.assert_close(old, torch.from_numpy(two_step.copy()).permute(2, 0, 1).float(), rtol=0, atol=1e-4)
