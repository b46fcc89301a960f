"""Tiny random-weight editing pipelines (Qwen-Image-Edit and -2509/2511's ``QwenImageEditPlusPipeline``), built offline
like :mod:`treegrpo.testing.tiny_models`.

The Qwen-Image-Edit pipeline encodes the prompt with Qwen2.5-VL *and* the source image, through a
``Qwen2VLProcessor``. transformers 5 builds that processor's video processor with torchvision,
which this environment does not have, so the tiny pipeline saves :class:`ImageOnlyQwen2VLProcessor`
(the same processor without the video part; images go through ``Qwen2VLImageProcessorPil``). The
released checkpoints keep ``Qwen2VLProcessor``; nothing in the adapter depends on the difference.

Sizes: the VAE downsamples 4x, the vision tower takes 4 x 4 patches merged 2 x 2, so a 32 x 64
source image is 32 VAE tokens and 32 vision tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import ProcessorMixin, Qwen2VLProcessor  # noqa: F401 (see below)

from treegrpo.testing.tiny_models import build_tiny_qwenimage, tiny_pipeline

# ProcessorMixin is imported on purpose: diffusers finds a component's load method by looking up the
# base classes (ProcessorMixin, ...) in the module model_index.json names, here this one.

VISION_PATCH = 4
"""Patch side of the tiny vision tower (and of its image processor)."""


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with an image processor and a tokenizer but no video processor (no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


def tiny_vl_processor(tokenizer):  # -> ImageOnlyQwen2VLProcessor
    """The tiny vision tower's processor: 4 x 4 patches merged 2 x 2, any image of at least 8 x 8 kept at its size."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=VISION_PATCH, temporal_patch_size=2, merge_size=2, min_pixels=64, max_pixels=256 * 256
    )
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_qwenimage_edit(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny QwenImageEditPipeline: the tiny Qwen-Image transformer, VAE, scheduler and tokenizer, a
    Qwen2.5-VL encoder whose one-block vision tower takes 4 x 4 patches, and its processor."""
    from diffusers import QwenImageEditPipeline, QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    base = QwenImagePipeline.from_pretrained(build_tiny_qwenimage(path.with_name(path.name + "-qwenimage"), seed))
    config = Qwen2_5_VLConfig.from_dict(base.text_encoder.config.to_dict())
    vision = config.vision_config
    vision.patch_size = VISION_PATCH
    vision.window_size = VISION_PATCH * 2 * 2  # windows of 2 x 2 merged patches
    vision.fullatt_block_indexes = [0]
    torch.manual_seed(seed + 3)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    pipe = QwenImageEditPipeline(
        scheduler=base.scheduler,
        vae=base.vae,
        text_encoder=text_encoder,
        tokenizer=base.tokenizer,
        processor=tiny_vl_processor(base.tokenizer),
        transformer=base.transformer,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_qwenimage_edit_plus(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny QwenImageEditPlusPipeline (Qwen-Image-Edit-2509 / 2511: several source images per prompt): the
    tiny Qwen-Image-Edit components, which that pipeline takes unchanged."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    path = Path(path)
    edit = QwenImageEditPipeline.from_pretrained(build_tiny_qwenimage_edit(path.with_name(path.name + "-edit"), seed))
    QwenImageEditPlusPipeline(**{name: getattr(edit, name) for name in (
        "scheduler", "vae", "text_encoder", "tokenizer", "processor", "transformer"
    )}).save_pretrained(path)
    return path


EDIT_BUILDERS = {"qwenimage_edit": build_tiny_qwenimage_edit, "qwenimage_edit_plus": build_tiny_qwenimage_edit_plus}


@functools.lru_cache(maxsize=None)
def tiny_edit_pipeline(family: str = "qwenimage_edit") -> Path:
    """A tiny editing pipeline folder built once per test process (see :func:`treegrpo.testing.tiny_models.tiny_pipeline`);
    ``qwenimage_edit_plus`` is the ``QwenImageEditPlusPipeline`` of the ``qwenimage_edit`` family."""
    if family not in EDIT_BUILDERS:
        return tiny_pipeline(family)
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"tiny-{family}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return EDIT_BUILDERS[family](root / "pipeline")
