"""Prompts from a Hugging Face dataset: the prompt column, and an image column that makes editing prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from treegrpo.config import DataConfig
from treegrpo.data import load_prompt_sets, load_prompts
from treegrpo.prompts import DataError, EditPrompt, source_image

datasets = pytest.importorskip("datasets")


def _picture(seed: int) -> Image.Image:
    """A non-square RGB picture with hard edges (PNG keeps it exactly)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    pixels[:, :7] = 0
    return Image.fromarray(pixels)


def _parquet_dataset(folder: Path, images: list) -> Path:  # type: ignore[type-arg]
    folder.mkdir()
    table = datasets.Dataset.from_dict(
        {"prompt": ["make it red", "  ", "rotate the square, then  add ünïcode"][: len(images)], "image": images},
        features=datasets.Features({"prompt": datasets.Value("string"), "image": datasets.Image()}),
    )
    table.to_parquet(str(folder / "train.parquet"))
    return folder


def test_an_image_column_becomes_edit_prompts_with_the_exact_pictures(tmp_path: Path) -> None:
    folder = _parquet_dataset(tmp_path / "edits", [_picture(0), _picture(1), _picture(2)])
    prompts = load_prompts(str(folder), split="train")
    assert prompts == ["make it red", "rotate the square, then  add ünïcode"]  # the empty prompt is dropped
    assert all(isinstance(p, EditPrompt) and isinstance(p.image, bytes) for p in prompts)  # decoded when used
    for prompt, seed in zip(prompts, (0, 2)):
        loaded = source_image(prompt)
        assert loaded is not None and loaded.size == (20, 12)
        assert np.array_equal(np.asarray(loaded), np.asarray(_picture(seed)))


def test_rows_without_an_image_and_image_field_null_give_plain_prompts(tmp_path: Path) -> None:
    folder = _parquet_dataset(tmp_path / "mixed", [_picture(0), None, None])
    first, second = load_prompts(str(folder), split="train")  # the empty prompt is dropped
    assert isinstance(first, EditPrompt) and not isinstance(second, EditPrompt) and source_image(second) is None
    sets = load_prompt_sets(DataConfig(prompts=str(folder), eval_prompts=str(folder), eval_dataset_split="train",
                                       image_field=None, prompts_per_iteration=1, num_eval_prompts=1), seed=0)
    assert sorted(sets.train) == ["make it red", "rotate the square, then  add ünïcode"]
    assert not any(isinstance(p, EditPrompt) for p in sets.train + sets.eval)


def test_a_path_column_resolves_against_the_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "paths"
    (folder / "images").mkdir(parents=True)
    _picture(3).save(folder / "images" / "a.png")
    (folder / "train.csv").write_text("prompt,source\nmake it blue,images/a.png\n")
    prompt, = load_prompts(str(folder), split="train", image_field="source")
    assert isinstance(prompt, EditPrompt) and prompt.image == (folder / "images" / "a.png").resolve()
    assert np.array_equal(np.asarray(source_image(prompt)), np.asarray(_picture(3)))
    (folder / "train.csv").write_text("prompt,source\nmake it blue,images/missing.png\n")
    with pytest.raises(DataError, match=r"row 0: source image .*missing.png does not exist; fix column 'source'"):
        load_prompts(str(folder), split="train", image_field="source")
