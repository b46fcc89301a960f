"""Flow-GRPO's OCR reward (text rendering), with the PP-OCRv4 ONNX models of ``rapidocr-onnxruntime``.

Definition (Flow-GRPO's ``OcrScorer``):

* target: the text after the first ASCII double quote up to the next one (``prompt.split('"')[1]``:
  later quoted spans are ignored, a lone quote takes the rest of the prompt); recognised text: the OCR lines with confidence > 0, joined without
  separator. Both have their spaces removed and are lowercased.
* ``dist = 0`` if the target occurs in the recognised text, else the Levenshtein distance, capped
  at ``len(target)``; ``score = 1 - dist / len(target)``. Nothing recognised (or an OCR failure)
  gives distance ``len(target)``, i.e. score 0.

Flow-GRPO crashes on a prompt without a quote or with empty quotes; here that is a one-line
``ValueError``. Images go to the OCR as 8-bit RGB arrays without the angle classifier, as Flow-GRPO
feeds PaddleOCR (``cls=False``); lines below RapidOCR's ``text_score`` (0.5, PaddleOCR's drop score
too) are dropped by the engine. Flow-GRPO uses PaddleOCR's PP-OCR models through paddle; these are
the PP-OCRv4 models exported to ONNX, so recognised text can differ on hard images. Install with
``pip install treegrpo[ocr]``; ``engine_options`` go to ``RapidOCR(**engine_options)``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from treegrpo.errors import ConfigError
from treegrpo.rewards.base import BatchedReward

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pure scoring


def quoted_target(prompt: str) -> str:
    """The text after the first ``"`` of ``prompt`` up to the next one (Flow-GRPO's ``split('"')[1]``)."""
    parts = prompt.split('"')
    if len(parts) < 2:
        raise ValueError(f'ocr reward: prompt {prompt[:60]!r} has no text in double quotes: write e.g. a sign saying "OPEN"')
    return parts[1]


def normalise_text(text: str) -> str:
    """Flow-GRPO's normalisation: remove spaces (``" "`` only) and lowercase."""
    return text.replace(" ", "").lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions; each costs 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def ocr_score(recognized: str, prompt: str) -> float:
    """``1 - min(dist, len(target)) / len(target)``, with ``dist = 0`` when the target is contained."""
    target = normalise_text(quoted_target(prompt))
    if not target:
        raise ValueError(f"ocr reward: the quoted text of prompt {prompt[:60]!r} is empty (after removing spaces)")
    text = normalise_text(recognized)
    dist = 0 if target in text else min(levenshtein(text, target), len(target))
    return 1.0 - dist / len(target)


def recognized_text(result: Any) -> str:
    """Concatenate the recognised lines with confidence > 0 from a RapidOCR result (``None``: nothing)."""
    if not result:
        return ""
    pieces = []
    for line in result:
        try:
            text, confidence = line[1], float(line[2])
        except (TypeError, IndexError, ValueError):
            continue
        if isinstance(text, str) and confidence > 0:
            pieces.append(text)
    return "".join(pieces)


# ----------------------------------------------------------------------------- the reward


def _load_engine(options: dict[str, Any]) -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ImportError("the ocr reward needs rapidocr-onnxruntime: pip install treegrpo[ocr]") from None
    return RapidOCR(**options)


class OcrReward(BatchedReward):
    """Flow-GRPO's OCR reward in [0, 1] (see the module docstring); runs on the CPU via onnxruntime."""

    name = "ocr"

    def __init__(self, *, engine_options: dict[str, Any] | None = None, batch_size: int = 16, **options: Any) -> None:
        for shared in ("device", "dtype", "reward_device", "offload"):  # onnxruntime on the CPU, no torch model
            options.pop(shared, None)
        if options:
            raise TypeError(f"unknown option(s) for the ocr reward: {sorted(options)} (engine settings go in engine_options)")
        super().__init__(device="cpu", batch_size=batch_size)
        self.engine = _load_engine(dict(engine_options or {}))
        self.last_texts: list[str] = []

    def recognize(self, image: torch.Tensor) -> str:
        """OCR of one ``[3, H, W]`` image in [0, 1] (8-bit RGB, as Flow-GRPO feeds it)."""
        array = (image.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        try:
            result, _ = self.engine(np.ascontiguousarray(array.numpy()), use_cls=False)  # Flow-GRPO: cls=False
        except Exception as error:  # Flow-GRPO: an OCR failure scores as nothing recognised
            logger.warning("ocr failed on an image (%s): scored as no text", type(error).__name__)
            return ""
        return recognized_text(result)

    def check_prompts(self, prompts: Sequence[str], source: str) -> None:
        """Every prompt names the text to render in double quotes (checked before any model loads)."""
        for number, prompt in enumerate(prompts, start=1):
            try:
                ocr_score("", prompt)
            except ValueError as error:
                reason = str(error).removeprefix("ocr reward: ")
                raise ConfigError(f"ocr reward, {source} prompt {number}: {reason}") from None

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        for prompt in prompts:  # bad prompts fail before any OCR runs
            ocr_score("", prompt)
        texts = [self.recognize(image) for image in images]
        self.last_texts = texts
        return torch.tensor([ocr_score(t, p) for t, p in zip(texts, prompts)], dtype=torch.float32)
