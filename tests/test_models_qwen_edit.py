"""Qwen-Image-Edit through the engine, checked against diffusers' own ``QwenImageEditPipeline``.

A tiny random pipeline (:mod:`treegrpo.testing.tiny_edit_models`), fp32, a non-square 32 x 64 image (VAE 4x
here, so 4 x 8 packed noisy tokens plus 4 x 8 source tokens). The engine's ODE plan reproduces
the pipeline's output latents for the same instructions and source images without and with true
CFG (the negative prompt is encoded with each source image); a tree iteration re-scores to ratio
1 before any update; a trained LoRA loads through ``pipe.load_lora_weights``; one trainer
iteration runs on a .jsonl with ``prompt`` and ``image`` fields. Run with ``-s`` to see the
measured differences.

diffusers' pipeline sizes the source image to a 1024 x 1024 area (``calculate_dimensions``); the
engine sizes it to the output's area (Flow-GRPO's ``max_area = resolution ** 2``), so the parity
tests call the pipeline with that area patched in (see :func:`_pipeline_source_area`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from tests.test_models_training import train_toward_zero
from tests import test_models_tree
from tests.test_models_editing import SourceBrightness, _write_jsonl
from treegrpo.testing.tiny_edit_models import tiny_edit_pipeline
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, torch_threads
from treegrpo.prompts import EditPrompt, source_image
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE

HEIGHT, WIDTH = 32, 64
STEPS = 3
TRUE_CFG = 4.0
"""The pipeline's default ``true_cfg_scale`` (the released model has no guidance embedding)."""
NEGATIVE = "blurry"
MAX_SEQUENCE_LENGTH = 512
"""Generous: the character-level tiny tokenizer makes the edit template's text long."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _pipeline_source_area(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline sizes the source to the output's area (Flow-GRPO's ``max_area``), not 1024 x 1024."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    original = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(
        pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: original(HEIGHT * WIDTH, ratio)
    )


def _image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> Any:
    """A seeded random RGB PIL image."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def edit_prompts() -> list[str]:
    """Two instructions with different source images at the output's aspect ratio."""
    return [EditPrompt("make it red", _image(1)), EditPrompt("add two cats", _image(2))]


def _config(**overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_edit_pipeline()),
        "dtype": "fp32",
        "device": "cpu",
        "height": HEIGHT,
        "width": WIDTH,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "negative_prompt": NEGATIVE,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine_latents(backbone: DiffusersBackbone, seed: int, guidance: float = 1.0, denoiser: Any = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise."""
    prompts = edit_prompts()
    schedule = backbone.schedule(STEPS)
    model_fn = backbone.model_fn(backbone.encode_prompts(prompts), guidance, schedule, denoiser=denoiser)
    noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return rollout_trees(model_fn, schedule.stepper(0.0), (ODE,) * STEPS, noise, torch.arange(len(prompts))).leaf_latents


def _pipeline_latents(pipe: Any, seed: int, true_cfg: float = 1.0) -> torch.Tensor:
    """The pipeline's packed output latents for the same instructions and source images."""
    prompts = edit_prompts()
    with torch.no_grad():
        return pipe(
            image=[source_image(p) for p in prompts],
            prompt=[str(p) for p in prompts],
            negative_prompt=[NEGATIVE] * len(prompts) if true_cfg > 1 else None,
            true_cfg_scale=true_cfg,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).images.float()


@pytest.mark.parametrize("true_cfg", [1.0, TRUE_CFG])
def test_ode_plan_reproduces_pipeline(true_cfg: float) -> None:
    backbone = load_backbone(_config())
    assert isinstance(backbone, DiffusersBackbone) and backbone.family == "qwenimage_edit"
    engine = _engine_latents(backbone, seed=7, guidance=true_cfg)
    pipeline = _pipeline_latents(load_pipeline_like_a_user(tiny_edit_pipeline()), seed=7, true_cfg=true_cfg)
    difference = (engine - pipeline).abs().max().item()
    print(f"qwenimage_edit true_cfg={true_cfg}: max |engine - pipeline| latents = {difference:.3g}")
    assert engine.shape == pipeline.shape == (2, (HEIGHT // 8) * (WIDTH // 8), 16) and difference < 1e-5
    assert backbone.decode(engine).shape == (2, 3, HEIGHT, WIDTH)
    if true_cfg > 1:  # the negative prompt (seen with the source image) really changes the result
        assert (engine - _engine_latents(backbone, seed=7)).abs().max().item() > 1e-4


def test_source_image_reaches_both_the_text_encoder_and_the_transformer() -> None:
    """Another source image changes the VL prompt embeddings and, with them fixed, the transformer's output."""
    backbone = load_backbone(_config())
    first, second = (backbone.encode_prompts([EditPrompt("make it red", _image(seed))]) for seed in (1, 3))
    assert (first.prompt_embeds - second.prompt_embeds).abs().max().item() > 1e-4
    assert (first.negative_prompt_embeds - second.negative_prompt_embeds).abs().max().item() > 1e-4
    assert first.negative_per_prompt and first.source_latents is not None
    assert first.source_latents.shape == (1, (HEIGHT // 8) * (WIDTH // 8), 16)
    swapped = first.select([0])
    assert second.source_latents is not None
    swapped.source_latents = second.source_latents  # same text embeddings, other source tokens
    schedule = backbone.schedule(STEPS)
    noise = backbone.initial_noise(1, torch.Generator().manual_seed(0))
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        outputs = [backbone.model_fn(cond, 1.0, schedule)(noise, zero, zero) for cond in (first, swapped)]
    assert (outputs[0] - outputs[1]).abs().max().item() > 1e-4


def test_plain_prompt_and_too_small_images_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="source image"):
        load_backbone(_config()).encode_prompts(["make it red"])
    with pytest.raises(ConfigError, match="at least 32 x 32"):
        load_backbone(_config(height=16, width=16))


def test_tree_iteration_rescores_to_ratio_one_and_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(test_models_tree, "PROMPTS", edit_prompts())
    backbone = load_backbone(_config())
    # The last block's text-stream output is discarded (as for Qwen-Image), so its to_add_out LoRA is unused.
    last = f"transformer_blocks.{len(backbone.denoiser.transformer_blocks) - 1}.attn.to_add_out"
    without_gradient = (f"{last}.lora_A.default.weight", f"{last}.lora_B.default.weight")
    test_models_tree.check_tree_iteration(backbone, TRUE_CFG, noise_level=1.0, without_gradient=without_gradient)


def test_lora_round_trip_through_load_lora_weights(tmp_path: Path) -> None:
    backbone = load_backbone(_config())
    base = _engine_latents(backbone, seed=5)
    train_toward_zero(backbone, edit_prompts(), 1.0, STEPS, label="qwenimage_edit")
    trained = _engine_latents(backbone, seed=5)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine_latents(backbone, seed=5, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_edit_pipeline())
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = _pipeline_latents(pipe, seed=5)
    pipe.disable_lora()
    without_lora = _pipeline_latents(pipe, seed=5)
    difference = (with_lora - trained).abs().max().item()
    print(f"qwenimage_edit: max |diffusers + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5
    assert (without_lora - base).abs().max().item() < 1e-5


@pytest.mark.parametrize("method", ["treegrpo", "diffusion_nft"])
def test_trainer_iteration_full_finetune_on_jsonl_edit_prompts(tmp_path: Path, method: str) -> None:
    """One trainer iteration (full fine-tuning, true CFG) on .jsonl records with ``prompt`` and ``image`` fields."""
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    for seed in range(3):
        _image(10 + seed, height=16, width=24).save(tmp_path / f"{seed}.png")  # resized to 32 x 64 by the backbone
    prompts = _write_jsonl(tmp_path, [{"prompt": f"edit {seed}", "image": f"{seed}.png"} for seed in range(3)])
    values = {
        "model": {"path": str(tiny_edit_pipeline()), "dtype": "fp32", "device": "cpu", "height": HEIGHT,
                  "width": WIDTH, "max_sequence_length": MAX_SEQUENCE_LENGTH, "negative_prompt": NEGATIVE,
                  "full_finetune": True},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 2, "heldout": 1, "num_eval_prompts": 1},
        "tree": {"k": 2, "window": 2},
        "sampling": {"steps": 3, "guidance_scale": TRUE_CFG},
        "reward": "tests.test_models_editing:SourceBrightness",
        "train": {"iterations": 1, "lr": 1e-4, "checkpoint_every": 0, "eval_every": 1, "progress": False},
    }
    SourceBrightness.seen = []
    folder = tmp_path / "run"
    if method != "treegrpo":  # DiffusionNFT on the edited images (the source images condition every forward)
        values.pop("tree")
    train(resolve_config(values, [f"output_dir={folder}", f"method={method}"]))  # type: ignore[arg-type]
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and "reward_mean" in record
    assert (folder / "eval.jsonl").read_text().strip(), "the held-out edit prompt was not evaluated"
    assert SourceBrightness.seen and all(text.startswith("edit ") and size == (24, 16) for text, size in SourceBrightness.seen)
