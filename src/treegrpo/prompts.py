"""Prompts that carry more than their text: a source image (image editing), a prompt set's fields;
and how to read a source image.

Low in the layers so that models, rewards and data can all use it: an :class:`EditPrompt` is a
``str`` (everything that logs, captions or samples prompts keeps working) with an ``image``; a
:class:`PromptRecord` is a ``str`` with ``metadata`` (DrawBench's category, GenEval's tag and objects).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from treegrpo.errors import ConfigError


class DataError(ConfigError):
    """Prompts or their source images could not be loaded; the message names the file and the fix."""


class EditPrompt(str):
    """An editing instruction (the string itself) with its source image, ``image``: a path, a PIL image or
    the encoded file's bytes (a dataset's image column, decoded when used); or a list of them, the
    source images of a multi-image edit (Qwen-Image-Edit-2509/2511: a .jsonl record's ``images``).

    A ``str`` so everything that logs, captions, splits or samples prompts keeps working unchanged;
    editing backbones and rewards with ``takes_source`` read ``image``.
    """

    image: Any

    def __new__(cls, text: str, image: Any) -> "EditPrompt":
        prompt = super().__new__(cls, text)
        prompt.image = image
        return prompt

    def __reduce__(self) -> tuple[Any, ...]:
        return (EditPrompt, (str(self), self.image))


class PromptRecord(str):
    """A prompt (the string itself) with the fields its source gives it, ``metadata``: DrawBench's
    ``category``, GenEval's ``tag`` / ``include`` / ``exclude``, a .jsonl record's other fields.

    A ``str`` so it goes wherever a prompt goes; a reward that needs the fields (GenEval's detector)
    reads ``metadata``, also behind the reward server (the client sends it as JSON beside the prompt).
    """

    metadata: dict[str, Any]

    def __new__(cls, text: str, metadata: Mapping[str, Any]) -> "PromptRecord":
        prompt = super().__new__(cls, text)
        prompt.metadata = dict(metadata)
        return prompt

    @property
    def text(self) -> str:
        """The prompt as a plain ``str``."""
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PromptRecord, (str(self), self.metadata))


def prompt_metadata(prompt: str) -> Optional[dict[str, Any]]:
    """A :class:`PromptRecord`'s ``metadata``; ``None`` for any other prompt."""
    metadata = getattr(prompt, "metadata", None)
    return metadata if isinstance(metadata, dict) else None


class ImageBombError(ValueError):
    """An image with more pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""


UNREADABLE = (OSError, ValueError, SyntaxError)
"""What opening a damaged, empty, foreign or oversized image file raises (Pillow uses all three)."""


def open_image_rgb(source: Any) -> Any:
    """A path, file object or PIL image as a decoded RGB PIL image; more pixels than Pillow's
    decompression-bomb limit is an :class:`ImageBombError` (Pillow itself only warns below twice the limit)."""
    import warnings

    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as opened:
                return opened.convert("RGB")
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageBombError(f"more pixels than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS}") from None


def unreadable_image_reason(source: Any) -> Optional[str]:
    """Why ``source`` (a path or file object) is not a readable image, in a few words; ``None`` when it is."""
    try:
        open_image_rgb(source)
    except UNREADABLE as error:
        return _reason(error)
    return None


def _reason(error: BaseException) -> str:
    if isinstance(error, ImageBombError):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else "cannot be decoded"
    return f"{type(error).__name__}: {text}"


def source_image(prompt: str) -> Optional[Any]:
    """The RGB PIL source image of an :class:`EditPrompt` (read from its path), ``None`` for a plain prompt;
    the first one of a multi-image prompt (what rewards with ``takes_source`` see)."""
    images = source_image_list(prompt)
    return None if images is None else images[0]


def source_image_list(prompt: str) -> Optional[list[Any]]:
    """Every RGB PIL source image of an :class:`EditPrompt`, in order (one for a single-image prompt); ``None`` for a plain prompt."""
    image = getattr(prompt, "image", None)
    if image is None:
        return None
    return [_read_source(item) for item in image] if isinstance(image, (list, tuple)) else [_read_source(image)]


def _read_source(image: Any) -> Any:
    """One source image (a path, encoded bytes or a PIL image) as an RGB PIL image."""
    if isinstance(image, (str, Path, bytes)):
        name = f"{len(image)} bytes of an image column" if isinstance(image, bytes) else str(image)
        try:
            return open_image_rgb(io.BytesIO(image) if isinstance(image, bytes) else image)
        except UNREADABLE as error:
            raise DataError(f"cannot read source image {name} ({_reason(error)}); use a PNG/JPEG file") from None
    return open_image_rgb(image)


def source_images(prompts: Sequence[str]) -> list[Optional[Any]]:
    """:func:`source_image` of each prompt (what rewards with ``takes_source`` receive)."""
    return [source_image(prompt) for prompt in prompts]


def source_images_or_error(prompts: Sequence[str], family: str) -> list[Any]:
    """The prompts' PIL source images; a plain-text prompt, or one with several source images, is a one-line ConfigError."""
    lists = source_image_lists_or_error(prompts, family)
    several = max(len(images) for images in lists) if lists else 1
    if several > 1:
        raise ConfigError(
            f"{family} takes one source image per prompt but a prompt has {several}; give each record one 'image', or "
            "use a model whose pipeline takes several (QwenImageEditPlusPipeline: Qwen-Image-Edit-2509 / 2511)"
        )
    return [images[0] for images in lists]


def source_image_lists_or_error(prompts: Sequence[str], family: str) -> list[list[Any]]:
    """Each prompt's PIL source images (one or more); a plain-text prompt is a one-line ConfigError (editing needs images)."""
    lists = [source_image_list(prompt) for prompt in prompts]
    if any(not images for images in lists):
        raise ConfigError(
            f"{family} edits images: every prompt needs a source image; use a .jsonl with 'prompt' and 'image' "
            "(or 'images': a list) fields"
        )
    return [images for images in lists if images]
