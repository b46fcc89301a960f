"""The reward interface, plus the CLIP-style image preparation shared by the neural scorers.

A reward is a callable ``(images [B, 3, H, W] float in [0, 1], prompts) -> scores [B]`` (float32,
CPU). A remote reward that declares ``abstains = True`` (the VLM judge, the reward-server client)
may return NaN for an image it could not score: the trainer leaves that image out of its group's
statistics and of training and counts it (``reward_unscored``); from any other reward a NaN is a
fault (:mod:`treegrpo.runtime.guards`). Editing: a reward that declares ``takes_source = True`` is also called with
``source_images=`` (each prompt's PIL source image, ``None`` for a plain prompt; see
:class:`treegrpo.data.EditPrompt`); the others never see them. :class:`BatchedReward` supplies the common part (input checks, ``torch.no_grad()``, batching,
device/dtype options); a scorer only writes :meth:`BatchedReward.score_batch`.

Image preparation runs in torch so it works batched on a GPU. It reproduces the authors' pipelines,
which all start from an 8-bit image (PIL or a saved PNG):

* ``quantize_uint8``: images are rounded to the 1/255 grid first, as saving to PIL does.
* ``resize_shortest_side``: bicubic with ``antialias=True`` (the Keys kernel with a = -0.5 that PIL
  uses, widened when downscaling). Output size follows torchvision/transformers: the short side
  becomes ``size``, the long side ``int(size * long / short)`` (truncated). An image already at that
  size is returned untouched, as torchvision and PIL do.
* ``pil_resample=True`` (PickScore, ImageReward, CLIPScore, aesthetic: PIL-based processors) resizes
  with :func:`treegrpo.rewards.pil_resample.pil_resize`, a bit-exact reimplementation of PIL's 8-bit
  two-pass bicubic (fixed-point weights, clamp and round between the passes). A float resize
  rounded once at the end is *not* close on hard edges where the cubic overshoots (measured by
  ``benchmarks/reward_parity.py``, figures in benchmarks/RESULTS.md); ``tests/test_rewards_preprocess.py`` checks against PIL itself.
* ``resize_longest_side_and_pad``: open_clip's ``ResizeMaxSize`` (what hpsv2's ``preprocess_val``
  uses): long side -> ``size`` (``round`` half-to-even on the short side), then zero padding split
  ``pad // 2`` before and the rest after.
* ``center_crop``: torchvision rounds the offset ``(H - size) / 2`` half-to-even, transformers'
  CLIPImageProcessor floors it; they differ by one pixel when the excess is odd and ``(excess // 2)``
  is odd. Both are available.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Literal, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from treegrpo.errors import ConfigError
from treegrpo.runtime.placement import resolve_device, resolve_dtype

from treegrpo.rewards.pil_resample import pil_resize

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

CropRounding = Literal["torchvision", "floor"]

class RewardOutputError(ConfigError):
    """A reward returned something the trainer cannot use (wrong count, shape or type): the user's reward code is
    at fault, so it is a one-line error (exit 2) that says what came back and what is expected."""


def checked_scores(raw: object, name: str, images: int) -> torch.Tensor:
    """A reward's output as float32 CPU scores ``[images]``, or a :class:`RewardOutputError` saying what is wrong."""
    try:
        scores = torch.as_tensor(raw).detach().to("cpu", torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise RewardOutputError(f"reward {name!r} returned {type(raw).__name__}, not numbers; return one score "
                                f"per image ({images} here) as a tensor, array or list") from None
    if scores.numel() != images or (scores.ndim > 1 and scores.squeeze().ndim > 1):
        raise RewardOutputError(f"reward {name!r} returned scores of shape {tuple(scores.shape)} for {images} images; "
                                f"return one score per image, shape [{images}] (reduce per-pixel or per-token values first)")
    return scores.reshape(-1)


@runtime_checkable
class RewardFn(Protocol):
    """``reward(images [B, 3, H, W] in [0, 1], prompts) -> float32 CPU tensor [B]``."""

    name: str

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


def check_inputs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """Reject anything but a [B, 3, H, W] floating tensor with B prompts (one-line errors)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}: divide uint8 by 255")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        count = "a single string" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise ValueError(f"need one prompt per image: {images.shape[0]} images but {count}")


class BatchedReward(ABC):
    """Common body of every scorer: checks, ``no_grad``, batching, float32 CPU output.

    Placement options: ``reward_device`` puts the reward's models on that device whatever ``device``
    the trainer passes (e.g. a second GPU); ``offload=True`` moves them to the CPU after each call
    and back to the device before the next, freeing accelerator memory between uses (they stay on
    the device from construction until the first call ends; :meth:`offload_models` frees it sooner).
    """

    name: str = "reward"

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        reward_device: str | torch.device | None = None,
        offload: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(offload, bool):
            raise ValueError(f"offload must be true or false, got {offload!r}")
        self.device = resolve_device(reward_device if reward_device is not None else device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = int(batch_size)
        self.offload = offload

    def models(self) -> list[torch.nn.Module]:
        """The ``nn.Module`` attributes of this reward (what ``offload`` moves)."""
        return [value for value in vars(self).values() if isinstance(value, torch.nn.Module)]

    def place_models(self, device: str | torch.device) -> None:
        """Move every model of this reward to ``device``."""
        for module in self.models():
            module.to(device)

    def offload_models(self) -> None:
        """Move the models to the CPU now (they come back to ``device`` at the next call)."""
        self.place_models("cpu")

    @abstractmethod
    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score at most ``batch_size`` images (already checked); any device, shape [b]."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        prompts = list(prompts)
        chunks: list[torch.Tensor] = []
        if self.offload:
            self.place_models(self.device)
        try:
            with torch.no_grad():
                for start in range(0, images.shape[0], self.batch_size):
                    stop = start + self.batch_size
                    scores = self.score_batch(images[start:stop], prompts[start:stop])
                    chunks.append(scores.detach().reshape(-1).to("cpu", torch.float32))
        finally:
            if self.offload:
                self.offload_models()
        if not chunks:
            return torch.zeros(0, dtype=torch.float32)
        return torch.cat(chunks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"


# ----------------------------------------------------------------------------- image preparation


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, as converting to a PIL image (``(x * 255).round()``) does."""
    return (images * 255.0).round().clamp(0.0, 255.0) / 255.0


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest side -> ``size``, long side -> ``int(size * long / short)`` (torchvision's rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_shortest_side(images: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of float images so the short side is ``size``.

    ``antialias=True`` is PIL's kernel (and torchvision >= 0.17 on tensors); ``False`` is plain
    bicubic (a = -0.75), what torchvision < 0.17 did on tensors.
    """
    height, width = images.shape[-2:]
    new_shape = resized_shape(height, width, size)
    if new_shape == (height, width):
        return images
    return F.interpolate(images.float(), size=new_shape, mode="bicubic", align_corners=False, antialias=antialias)


def longest_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """open_clip's ``ResizeMaxSize`` geometry: scale ``size / max(H, W)``, each side ``round(side * scale)``."""
    scale = size / float(max(height, width))
    return round(height * scale), round(width * scale)


def resize_longest_side_and_pad(images: torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """Float bicubic resize so the long side is ``size``, then zero-pad to ``size x size`` (centred).

    open_clip's ``ResizeMaxSize`` on a tensor (hpsv2 converts to a tensor first, then resizes):
    padding is ``[pad // 2, pad - pad // 2]`` on each axis, fill 0 (black, before normalisation).
    Unlike open_clip, an image whose long side already equals ``size`` is padded too (open_clip
    would hand the model a non-square image, which the ViT cannot take).
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    new_height, new_width = longest_side_shape(height, width, size)
    x = images.float()
    if (new_height, new_width) != (height, width):
        x = F.interpolate(x, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=antialias)
    pad_h, pad_w = size - new_height, size - new_width
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return x


def crop_offsets(height: int, width: int, size: int, rounding: CropRounding) -> tuple[int, int]:
    """Top/left offsets of a centred ``size`` crop: torchvision rounds half-to-even, HF floors."""
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from {height}x{width}: resize first")
    if rounding == "torchvision":
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    if rounding == "floor":
        return (height - size) // 2, (width - size) // 2
    raise ValueError(f"unknown crop rounding {rounding!r}: use 'torchvision' or 'floor'")


def center_crop(images: torch.Tensor, size: int, rounding: CropRounding) -> torch.Tensor:
    """Centred square crop with the given offset rounding convention."""
    height, width = images.shape[-2:]
    top, left = crop_offsets(height, width, size, rounding)
    return images[..., top : top + size, left : left + size]


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: torch.Tensor,
    size: int,
    *,
    crop_rounding: CropRounding,
    pil_resample: bool,
    antialias: bool = True,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """8-bit quantise, resize short side, centre-crop, normalise: the CLIP recipe, in float32.

    ``pil_resample`` resizes exactly as PIL does on 8-bit images (``antialias`` is then moot: PIL
    always widens the kernel when downscaling); without it the resize stays in float, as
    torchvision does on a tensor.
    """
    x = quantize_uint8(images.float())
    if pil_resample:
        x = pil_resize(x, resized_shape(int(x.shape[-2]), int(x.shape[-1]), size))
    else:
        x = resize_shortest_side(x, size, antialias=antialias)
    x = center_crop(x, size, crop_rounding)
    return normalize(x, mean, std)
