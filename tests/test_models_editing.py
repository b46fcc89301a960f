"""Image-editing families (FLUX.1-Kontext) through the engine, checked against diffusers' own pipeline.

A prompt is an :class:`~treegrpo.data.EditPrompt` (instruction + source image). Tiny random
models, fp32, a non-square image: the engine's ODE plan reproduces the pipeline's output latents
for the same source images with the guidance embedding and with true CFG; a tree iteration
re-scores to ratio 1 before any update; a trained LoRA loads through ``pipe.load_lora_weights``.
Also: ``.jsonl`` records with ``image`` fields load as edit prompts, and rewards that declare
``takes_source`` receive the source images. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from tests import test_models_tree
from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, load_pipeline_like_a_user, tiny_pipeline, torch_threads
from treegrpo.data import load_prompts
from treegrpo.prompts import DataError, EditPrompt, source_image
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.rewards.multi import MultiReward
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE

HEIGHT, WIDTH = 16, 24
STEPS = 3
GUIDANCE = 2.5
"""Kontext-dev's default guidance (its guidance embedding)."""
TRUE_CFG = 2.0
NEGATIVE = "blurry"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> Any:
    """A seeded random RGB PIL image."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def edit_prompts() -> list[str]:
    """Two instructions with different source images (PIL images at the generated size)."""
    return [EditPrompt("make it red", _image(1)), EditPrompt("add two cats", _image(2))]


def _config(**overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline("flux_kontext")),
        "dtype": "fp32",
        "device": "cpu",
        "height": HEIGHT,
        "width": WIDTH,
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
        "negative_prompt": NEGATIVE,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine_latents(backbone: DiffusersBackbone, seed: int, denoiser: Any = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise."""
    prompts = edit_prompts()
    schedule = backbone.schedule(STEPS)
    model_fn = backbone.model_fn(backbone.encode_prompts(prompts), GUIDANCE, schedule, denoiser=denoiser)
    noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return rollout_trees(model_fn, schedule.stepper(0.0), (ODE,) * STEPS, noise, torch.arange(len(prompts))).leaf_latents


def _pipeline_latents(pipe: Any, seed: int, true_cfg: float = 1.0) -> torch.Tensor:
    """The pipeline's packed output latents for the same prompts and source images (no auto-resize)."""
    prompts = edit_prompts()
    with torch.no_grad():
        return pipe(
            prompt=[str(p) for p in prompts],
            image=[source_image(p) for p in prompts],
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            true_cfg_scale=true_cfg,
            negative_prompt=[NEGATIVE] * len(prompts) if true_cfg > 1 else None,
            max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            _auto_resize=False,
            max_area=HEIGHT * WIDTH,  # else the pipeline rescales the output to a 1024^2 area
        ).images.float()


@pytest.mark.parametrize("true_cfg", [1.0, TRUE_CFG])
def test_ode_plan_reproduces_pipeline(true_cfg: float) -> None:
    backbone = load_backbone(_config(true_cfg_scale=true_cfg))
    assert isinstance(backbone, DiffusersBackbone) and backbone.family == "flux_kontext"
    engine = _engine_latents(backbone, seed=7)
    pipeline = _pipeline_latents(load_pipeline_like_a_user(tiny_pipeline("flux_kontext")), seed=7, true_cfg=true_cfg)
    difference = (engine - pipeline).abs().max().item()
    print(f"flux_kontext true_cfg={true_cfg}: max |engine - pipeline| latents = {difference:.3g}")
    assert engine.shape == pipeline.shape and difference < 1e-5
    assert backbone.decode(engine).shape == (2, 3, HEIGHT, WIDTH)
    if true_cfg > 1:  # the negative prompt really changes the result
        assert (engine - _engine_latents(load_backbone(_config()), seed=7)).abs().max().item() > 1e-4


def test_source_image_changes_the_output() -> None:
    """The source tokens are really attended to: another source image, other latents."""
    backbone = load_backbone(_config())
    schedule = backbone.schedule(STEPS)
    noise = backbone.initial_noise(1, torch.Generator().manual_seed(0))
    outputs = []
    for seed in (1, 3):
        model_fn = backbone.model_fn(backbone.encode_prompts([EditPrompt("make it red", _image(seed))]), GUIDANCE, schedule)
        with torch.no_grad():
            outputs.append(model_fn(noise, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
    assert (outputs[0] - outputs[1]).abs().max().item() > 1e-4


def test_plain_prompt_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="source image"):
        load_backbone(_config()).encode_prompts(["make it red"])


def test_tree_iteration_rescores_to_ratio_one_and_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(test_models_tree, "PROMPTS", edit_prompts())
    test_models_tree.check_tree_iteration(load_backbone(_config()), GUIDANCE, noise_level=0.7)


def test_lora_round_trip_through_load_lora_weights(tmp_path: Path) -> None:
    backbone = load_backbone(_config())
    base = _engine_latents(backbone, seed=5)
    optimizer = torch.optim.Adam(backbone.trainable_parameters(), lr=5e-2)
    model_fn = backbone.model_fn(backbone.encode_prompts(edit_prompts()), GUIDANCE, backbone.schedule(STEPS))
    latents = backbone.initial_noise(2, torch.Generator().manual_seed(3))
    for step in range(3):
        loss = model_fn(latents, torch.full((2,), step % STEPS), torch.arange(2)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = _engine_latents(backbone, seed=5)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine_latents(backbone, seed=5, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline("flux_kontext"))
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = _pipeline_latents(pipe, seed=5)
    pipe.disable_lora()
    without_lora = _pipeline_latents(pipe, seed=5)
    difference = (with_lora - trained).abs().max().item()
    print(f"flux_kontext: max |diffusers + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5
    assert (without_lora - base).abs().max().item() < 1e-5


def _write_jsonl(folder: Path, records: list[dict[str, Any]]) -> Path:
    file = folder / "edits.jsonl"
    file.write_text("".join(json.dumps(record) + "\n" for record in records))
    return file


def test_jsonl_with_images_loads_edit_prompts(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _image(4).save(tmp_path / "images" / "a.png")
    file = _write_jsonl(tmp_path, [{"prompt": "make it red", "image": "images/a.png"}, {"prompt": "a plain prompt"}])
    prompts = load_prompts(str(file))
    assert prompts == ["make it red", "a plain prompt"]
    assert isinstance(prompts[0], EditPrompt) and prompts[0].image == (tmp_path / "images" / "a.png").resolve()
    assert not isinstance(prompts[1], EditPrompt) and source_image(prompts[1]) is None
    loaded = source_image(prompts[0])
    assert loaded is not None and np.array_equal(np.asarray(loaded), np.asarray(_image(4)))


def test_jsonl_missing_image_is_one_line_config_error(tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path, [{"prompt": "make it red", "image": "missing.png"}])
    with pytest.raises(DataError, match="missing.png, which does not exist") as error:
        load_prompts(str(file))
    assert isinstance(error.value, ConfigError) and "\n" not in str(error.value)


class _SourceBrightness:
    """A reward that scores each image by its source image's mean brightness (declares ``takes_source``)."""

    name = "source_brightness"
    takes_source = True

    def __init__(self) -> None:
        self.received: list[Any] = []

    def __call__(self, images: torch.Tensor, prompts: Any, *, source_images: list[Any]) -> torch.Tensor:
        self.received = source_images
        return torch.tensor([float(np.asarray(image).mean()) for image in source_images])


def test_reward_with_takes_source_receives_the_source_images() -> None:
    prompts = edit_prompts()
    source = _SourceBrightness()
    plain_calls: list[list[str]] = []

    def plain(images: torch.Tensor, texts: Any) -> torch.Tensor:
        plain_calls.append(list(texts))
        return images.flatten(1).mean(dim=1)

    multi = MultiReward({"source": source, "plain": plain})
    components = multi.components(torch.rand(2, 3, HEIGHT, WIDTH), prompts)
    assert [np.asarray(image).tolist() for image in source.received] == [np.asarray(_image(s)).tolist() for s in (1, 2)]
    expected = torch.tensor([float(np.asarray(_image(s)).mean()) for s in (1, 2)])
    assert torch.allclose(components["source"], expected)
    assert plain_calls == [["make it red", "add two cats"]]


class SourceBrightness:
    """Trainer-run reward (import path): the generated image's mean minus its source image's mean; keeps what it saw."""

    name = "source_brightness"
    takes_source = True
    seen: list[tuple[str, tuple[int, int]]] = []

    def __call__(self, images: torch.Tensor, prompts: Any, *, source_images: list[Any]) -> torch.Tensor:
        SourceBrightness.seen += [(str(p), image.size) for p, image in zip(prompts, source_images)]
        sources = torch.tensor([float(np.asarray(image).mean()) / 255 for image in source_images])
        return images.flatten(1).mean(dim=1) - sources


@pytest.mark.parametrize("method", ["treegrpo", "diffusion_nft"])
def test_trainer_iteration_edits_jsonl_prompts_and_passes_sources(tmp_path: Path, method: str) -> None:
    """One trainer iteration on the tiny Kontext: .jsonl edit prompts in, source images out to the reward."""
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    for seed in range(3):
        _image(10 + seed, height=8, width=8).save(tmp_path / f"{seed}.png")  # resized to 16 x 24 by the backbone
    prompts = _write_jsonl(tmp_path, [{"prompt": f"edit {seed}", "image": f"{seed}.png"} for seed in range(3)])
    values = {
        "model": {"path": str(tiny_pipeline("flux_kontext")), "dtype": "fp32", "device": "cpu", "height": HEIGHT,
                  "width": WIDTH, "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH, "lora": {"rank": 4, "alpha": 4}},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 2, "heldout": 1, "num_eval_prompts": 1},
        "tree": {"k": 2, "window": 2},
        "sampling": {"steps": 3, "guidance_scale": GUIDANCE},
        "reward": "tests.test_models_editing:SourceBrightness",
        "train": {"iterations": 1, "lr": 1e-3, "checkpoint_every": 0, "eval_every": 1, "progress": False},
    }
    SourceBrightness.seen = []
    folder = tmp_path / "run"
    if method != "treegrpo":  # DiffusionNFT on the edited images (the source images condition every forward)
        values.pop("tree")
    train(resolve_config(values, [f"output_dir={folder}", f"method={method}"]))  # type: ignore[arg-type]
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and "reward_mean" in record
    assert SourceBrightness.seen and all(text.startswith("edit ") and size == (8, 8) for text, size in SourceBrightness.seen)
