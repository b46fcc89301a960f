"""Wan image-to-video (``wan_i2v``) through the engine, checked against diffusers' own ``WanImageToVideoPipeline``.

Three tiny random layouts (fp32, 5 frames = 2 latent frames, non-square): Wan 2.1 I2V (CLIP image
embedding, mask + source latents as extra channels; 16 x 32 pixels, 512 text tokens as its
attention needs), Wan 2.2 I2V-A14B (the same channels, no CLIP, two experts: ODE parity only) and Wan 2.2 TI2V-5B (the source as the first latent frame, ``expand_timesteps``;
32 x 64 pixels, the 2.2 VAE's 16x). The prompts carry different source images, one of them not at
the output's size. The ODE plan from the engine's noise reproduces the pipeline's final latents
and decoded clips with and without CFG (the pipeline run per prompt, with its image, from the same
noise; the engine's noise is the pipeline's own draw); a tree iteration re-scores to ratio 1
before any update; a saved LoRA loaded with ``load_lora_weights`` gives the trained policy; full
fine-tuning moves the weights but not the reference; a trainer iteration on .jsonl prompts with
images. Run with ``-s`` to see the measured differences.
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
from treegrpo.engine.rollout import rollout_trees
from treegrpo.errors import ConfigError
from treegrpo.math.plans import ODE
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.prompts import EditPrompt
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads

STEPS, FRAMES, GUIDANCE, NEGATIVE = 3, 5, 5.0, "blurry"
SIZES = {"wan21": (16, 32, 512), "a14b": (16, 32, 16), "ti2v": (32, 64, 16)}
"""(height, width, max_sequence_length) per layout."""
VARIANTS = ("wan21", "ti2v")
"""The layouts every test runs; ``a14b`` runs the ODE parity (its experts are text-to-video Wan's, tested there)."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _image(seed: int, height: int, width: int) -> Any:
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _prompts(variant: str, seeds: tuple[int, int] = (1, 2)) -> list[str]:
    """Two prompts with different source images; the second is taller than the output (the pipeline resizes it)."""
    height, width, _ = SIZES[variant]
    return [EditPrompt("a red cube", _image(seeds[0], height, width)), EditPrompt("two cats", _image(seeds[1], height + 8, width))]


def _config(variant: str, **overrides: Any) -> ModelConfig:
    height, width, tokens = SIZES[variant]
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline("wan_i2v", variant=variant)), "dtype": "fp32", "device": "cpu", "height": height,
        "width": width, "num_frames": FRAMES, "max_sequence_length": tokens, "negative_prompt": NEGATIVE,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine(backbone: DiffusersBackbone, prompts: list[str], guidance: float, seed: int = 7, denoiser: Any = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from its initial noise."""
    schedule = backbone.schedule(STEPS)
    model_fn = backbone.model_fn(backbone.encode_prompts(prompts), guidance, schedule, denoiser=denoiser)
    noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return rollout_trees(model_fn, schedule.stepper(0.0), (ODE,) * STEPS, noise, torch.arange(len(prompts))).leaf_latents


def _pipeline(pipe: Any, variant: str, prompts: list[str], guidance: float, output_type: str = "latent",
              seed: int = 7) -> torch.Tensor:
    """The pipeline run once per prompt with its source image, from the rows of the seeded draw for the batch."""
    height, width, tokens = SIZES[variant]
    shape = (len(prompts), pipe.vae.config.z_dim, (FRAMES - 1) // 4 + 1, height // pipe.vae_scale_factor_spatial,
             width // pipe.vae_scale_factor_spatial)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    frames = []
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            frames.append(pipe(
                prompt=str(prompt), image=getattr(prompt, "image"), negative_prompt=NEGATIVE, height=height, width=width,
                num_frames=FRAMES, num_inference_steps=STEPS, max_sequence_length=tokens, guidance_scale=guidance,
                latents=noise[row : row + 1], output_type=output_type,
            ).frames.float())
    return torch.cat(frames)


@pytest.mark.parametrize("variant", tuple(SIZES))
@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_ode_plan_reproduces_the_pipeline(variant: str, guidance: float) -> None:
    backbone = load_backbone(_config(variant))
    assert backbone.family == "wan_i2v" and type(backbone.pipe).__name__ == "WanImageToVideoPipeline"
    assert backbone._two_experts() == (variant == "a14b")
    prompts = _prompts(variant)
    latents = _engine(backbone, prompts, guidance)
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan_i2v", variant=variant))
    expected = _pipeline(pipe, variant, prompts, guidance)
    difference = (latents - expected).abs().max().item()
    print(f"wan_i2v {variant} guidance={guidance}: max |engine - pipeline| latents = {difference:.3g}")
    assert latents.shape == expected.shape and difference < 1e-5
    clips = backbone.decode(latents)
    height, width, _ = SIZES[variant]
    assert clips.shape == (2, FRAMES, 3, height, width)
    clip_difference = (clips - _pipeline(pipe, variant, prompts, guidance, "pt")).abs().max().item()
    print(f"wan_i2v {variant} guidance={guidance}: max |engine - pipeline| decoded clips = {clip_difference:.3g}")
    assert clip_difference < 1e-4


def test_initial_noise_is_the_pipelines_own_draw_and_the_source_matters() -> None:
    """One pipeline call for both prompts (one shared image, its generator) equals the engine; another image changes it."""
    backbone = load_backbone(_config("wan21"))
    height, width, tokens = SIZES["wan21"]
    image = _image(1, height, width)
    prompts = [EditPrompt("a red cube", image), EditPrompt("two cats", image)]
    latents = _engine(backbone, prompts, 1.0)
    with torch.no_grad():
        expected = backbone.pipe(
            prompt=[str(p) for p in prompts], image=image, height=height, width=width, num_frames=FRAMES,
            num_inference_steps=STEPS, max_sequence_length=tokens, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(7), output_type="latent",
        ).frames.float()
    assert (latents - expected).abs().max().item() < 1e-5
    other = _engine(backbone, [EditPrompt("a red cube", _image(5, height, width)), prompts[1]], 1.0)
    assert (other[0] - latents[0]).abs().max().item() > 1e-3 and torch.equal(other[1], latents[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_tree_iteration_rescores_to_ratio_one_and_updates(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(test_models_tree, "PROMPTS", _prompts(variant))
    test_models_tree.check_tree_iteration(load_backbone(_config(variant)), GUIDANCE, noise_level=0.7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_round_trip_through_load_lora_weights(variant: str, tmp_path: Path) -> None:
    backbone = load_backbone(_config(variant))
    prompts = _prompts(variant)
    base = _engine(backbone, prompts, GUIDANCE)
    train_toward_zero(backbone, prompts, GUIDANCE, STEPS)
    trained = _engine(backbone, prompts, GUIDANCE)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine(backbone, prompts, GUIDANCE, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan_i2v", variant=variant))
    pipe.load_lora_weights(tmp_path / "lora")
    difference = (_pipeline(pipe, variant, prompts, GUIDANCE) - trained).abs().max().item()
    print(f"wan_i2v {variant}: max |WanImageToVideoPipeline + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5
    pipe.disable_lora()
    assert (_pipeline(pipe, variant, prompts, GUIDANCE) - base).abs().max().item() < 1e-5


def test_full_finetune_moves_weights_but_not_the_reference(tmp_path: Path) -> None:
    backbone = load_backbone(_config("ti2v", full_finetune=True), with_reference=True)
    prompts = _prompts("ti2v")
    assert len(backbone.trainable_parameters()) == len(list(backbone.denoiser.parameters()))
    before = _engine(backbone, prompts, GUIDANCE)
    train_toward_zero(backbone, prompts, GUIDANCE, STEPS, steps=1, lr=1e-2)
    after = _engine(backbone, prompts, GUIDANCE)
    assert (after - before).abs().max().item() > 1e-4
    assert torch.equal(_engine(backbone, prompts, GUIDANCE, denoiser=backbone.reference_denoiser()), before)
    backbone.save_trained(tmp_path / "full")
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan_i2v", variant="ti2v"))
    pipe.transformer = type(pipe.transformer).from_pretrained(tmp_path / "full", subfolder="transformer")
    assert (_pipeline(pipe, "ti2v", prompts, GUIDANCE) - after).abs().max().item() < 1e-5


def test_ti2v_published_as_a_wan_pipeline_loads_as_wan_i2v(tmp_path: Path) -> None:
    """Wan2.2-TI2V-5B-Diffusers' model_index names WanPipeline: ``model.family: wan_i2v`` animates images with it."""
    from diffusers import WanPipeline

    source = load_pipeline_like_a_user(tiny_pipeline("wan_i2v", variant="ti2v"))
    parts = {name: getattr(source, name) for name in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")}
    WanPipeline(**parts, expand_timesteps=True).save_pretrained(tmp_path / "ti2v")
    backbone = load_backbone(_config("ti2v", path=str(tmp_path / "ti2v"), family="wan_i2v"))
    assert type(backbone.pipe).__name__ == "WanImageToVideoPipeline"
    prompts = _prompts("ti2v")
    assert (_engine(backbone, prompts, 1.0) - _pipeline(source, "ti2v", prompts, 1.0)).abs().max().item() < 1e-5


def test_bad_settings_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs a source image") as error:
        load_backbone(_config("ti2v")).encode_prompts(["a red cube"])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="max_sequence_length=512"):
        load_backbone(_config("wan21", max_sequence_length=16))
    with pytest.raises(ConfigError, match="model.family=wan"):  # a text-to-video Wan has 16 input channels
        load_backbone(_config("ti2v", path=str(tiny_pipeline("wan")), family="wan_i2v", height=16, width=32))
    with pytest.raises(ConfigError, match="num_frames"):
        load_backbone(_config("ti2v", num_frames=6)).encode_prompts(_prompts("ti2v"))
    with pytest.raises(ConfigError, match="multiples of 32"):  # the 2.2 VAE's 16x times the 2 x 2 patch
        load_backbone(_config("ti2v", height=16))


def test_trainer_iteration_on_jsonl_prompts_with_images(tmp_path: Path) -> None:
    """One TreeGRPO trainer iteration on the tiny TI2V: .jsonl prompts with images in, clips scored."""
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    for seed in range(3):
        _image(10 + seed, 8, 8).save(tmp_path / f"{seed}.png")  # resized to 32 x 64 by the backbone
    prompts = tmp_path / "clips.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"animate {seed}", "image": f"{seed}.png"}) + "\n" for seed in range(3)))
    height, width, tokens = SIZES["ti2v"]
    values = {
        "model": {"path": str(tiny_pipeline("wan_i2v", variant="ti2v")), "dtype": "fp32", "device": "cpu",
                  "height": height, "width": width, "num_frames": FRAMES, "max_sequence_length": tokens,
                  "lora": {"rank": 4, "alpha": 4}},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 2, "heldout": 1, "num_eval_prompts": 1},
        "tree": {"k": 2, "window": 2},
        "sampling": {"steps": 3, "guidance_scale": GUIDANCE},
        "reward": "tests.test_models_video:_Brightness",
        "train": {"iterations": 1, "lr": 1e-3, "checkpoint_every": 0, "eval_every": 0, "eval_at_start": False,
                  "progress": False},
    }
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}", "method=treegrpo"]))  # type: ignore[arg-type]
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and "reward_mean" in record and record["optimizer_steps"] >= 1
    assert (folder / "final").exists()


def test_the_model_card_of_an_image_to_video_run_uses_frames(tmp_path: Path) -> None:
    from treegrpo.hub import model_card

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("model: {path: Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, num_frames: 5}\n")
    card = model_card(tmp_path / "run", "WanImageToVideoPipeline")
    assert ".frames[0]" in card and "export_to_video" in card and ".images[0]" not in card
