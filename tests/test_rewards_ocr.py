"""OCR reward: Flow-GRPO's scoring definition by hand on odd text (no OCR needed), then the real
PP-OCRv4 ONNX models on text rendered with PIL (skipped when rapidocr-onnxruntime is absent)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from treegrpo.rewards import get_reward
from treegrpo.rewards.ocr import levenshtein, normalise_text, ocr_score, quoted_target, recognized_text


def _edit_distance_by_definition(a: str, b: str) -> int:
    """Recursive definition of the edit distance (memo-free; only for short strings)."""
    if not a or not b:
        return len(a) + len(b)
    return min(
        _edit_distance_by_definition(a[1:], b) + 1,
        _edit_distance_by_definition(a, b[1:]) + 1,
        _edit_distance_by_definition(a[1:], b[1:]) + (a[0] != b[0]),
    )


def test_levenshtein_against_the_recursive_definition() -> None:
    words = ["", "a", "ab", "ba", "kitten", "sitting", "straße", "ßtr", "日本語", "日本"]
    for a, b in itertools.product(words, repeat=2):
        if len(a) + len(b) <= 10:
            assert levenshtein(a, b) == _edit_distance_by_definition(a, b), (a, b)
    assert levenshtein("kitten", "sitting") == 3


def test_quote_extraction_and_normalisation() -> None:
    assert quoted_target('A sign that says "Open 24 Hours" on a wall') == "Open 24 Hours"
    assert quoted_target('"first" and "second"') == "first"  # only the first quoted span counts
    assert quoted_target('a "dangling quote') == "dangling quote"  # one quote: the rest, as split('"')[1]
    assert quoted_target('a neon sign "Café ÜBER" at night') == "Café ÜBER"
    assert normalise_text("Café ÜBER 24") == "caféüber24"
    assert normalise_text("tab\there") == "tab\there"  # only spaces are removed, as Flow-GRPO does
    for bad in ("no quotes at all", "curly “quotes” only"):
        with pytest.raises(ValueError, match="no text in double quotes"):
            quoted_target(bad)


@pytest.mark.parametrize(
    "recognized, prompt, expected",
    [
        ("OPEN 24 HOURS", 'a sign "Open 24 Hours"', 1.0),
        ("WELCOME: open24hours!", 'a sign "Open 24 Hours"', 1.0),  # contained: distance 0
        ("OPEN 42 HOURS", 'a sign "Open 24 Hours"', 1 - 2 / 11),
        ("", 'a sign "Open"', 0.0),  # nothing recognised
        ("a completely different and much longer text", 'a sign "Open"', 0.0),  # capped at len(target)
        ("CAFE UBER", 'a sign "Café ÜBER"', 1 - 2 / 8),  # unicode letters count one each
        ("日本", 'a sign "日本語"', 1 - 1 / 3),
    ],
)
def test_ocr_score_by_hand(recognized: str, prompt: str, expected: float) -> None:
    assert ocr_score(recognized, prompt) == pytest.approx(expected)


def test_empty_target_and_rapidocr_result_parsing() -> None:
    with pytest.raises(ValueError, match="is empty"):
        ocr_score("anything", 'empty quotes "  " here')
    box = [[0, 0], [1, 0], [1, 1], [0, 1]]
    assert recognized_text(None) == "" and recognized_text([]) == ""
    assert recognized_text([[box, "OPEN", 0.98], [box, "24", 0.0], [box, "HOURS", "0.7"], ["bad"]]) == "OPENHOURS"


# ----------------------------------------------------------------------------- real OCR


def _render(text: str, size: tuple[int, int] = (448, 160)) -> torch.Tensor:
    image = Image.new("RGB", size, "white")
    if text:
        ImageDraw.Draw(image).text((24, 56), text, fill="black", font=ImageFont.load_default(size=40))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def ocr() -> object:
    pytest.importorskip("rapidocr_onnxruntime")
    return get_reward("ocr", engine_options={"intra_op_num_threads": 1, "inter_op_num_threads": 1}, device="cuda")


def test_real_ocr_on_rendered_text(ocr: object) -> None:
    images = torch.stack([_render("OPEN 24 HOURS"), _render("OPEN 24 DAYS"), _render("")])
    prompts = ['a shop sign saying "Open 24 Hours"'] * 3
    scores = ocr(images, prompts)  # type: ignore[operator]
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores[0].item() == pytest.approx(1.0)  # exact text
    assert 0.4 < scores[1].item() < 0.9  # one wrong word: HOURS -> DAYS, distance 4 or 5 of 11
    assert scores[2].item() == 0.0  # blank image: nothing recognised
    assert normalise_text(ocr.last_texts[0]) == "open24hours"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no text in double quotes"):
        ocr(images[:1], ["no quotes"])  # type: ignore[operator]
