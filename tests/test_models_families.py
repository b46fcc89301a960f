"""Qwen-Image, FLUX.2 [klein], Z-Image and Sana through the engine, checked against diffusers' own pipelines.

Per family (tiny random models, fp32, a non-square image): the engine's ODE plan reproduces the
pipeline's final latents and images with and without (true) CFG; a tree iteration re-scores to
ratio 1 before any update; a trained LoRA saved by ``save_trained`` and loaded with
``pipe.load_lora_weights`` gives the trained policy's latents; full fine-tuning moves the weights
but not the reference copy. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from tests import test_models_training as training
from tests.test_models_tree import check_tree_iteration
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE

PARITY_STEPS = 3
PROMPTS = training.PROMPTS
"""Of different lengths, so Qwen-Image and Z-Image pad and mask the text."""


@dataclass(frozen=True)
class Family:
    """How the tests drive one family: image size, text length, negative prompt, guidance."""

    name: str
    height: int
    width: int
    max_sequence_length: int
    negative_prompt: str
    guidance: float
    """Engine guidance with CFG (the pipeline's ``true_cfg_scale`` / ``guidance_scale``)."""
    no_guidance: float
    """Engine guidance meaning no CFG."""
    noise_level: float


FAMILIES = {
    # Qwen-Image's VAE downsamples 4x here (8x released): 32 x 48 pixels = 4 x 6 packed tokens.
    # 256 text tokens keep the prompts after the chat template's system text (character-level tokenizer).
    "qwenimage": Family("qwenimage", 32, 48, 256, "blurry", 4.0, 1.0, 1.2),
    "flux2": Family("flux2", 16, 24, 48, "", 4.0, 1.0, 0.7),
    "zimage": Family("zimage", 16, 24, 48, "blurry", 3.0, 0.0, 0.7),
    # Sana's pipeline takes multiples of 32; the tiny DC-AE downsamples 2x (32x released).
    "sana": Family("sana", 32, 64, 48, "blurry", 4.5, 1.0, 0.7),
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(family: Family, options: dict[str, Any] | None = None, **overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline(family.name, **(options or {}))),
        "dtype": "fp32",
        "device": "cpu",
        "height": family.height,
        "width": family.width,
        "max_sequence_length": family.max_sequence_length,
        "negative_prompt": family.negative_prompt,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _pipeline_guidance(family: Family, guidance: float) -> dict[str, Any]:
    """The pipeline call arguments meaning the engine's ``guidance``."""
    if family.name == "qwenimage":
        negative = family.negative_prompt if guidance > 1 else None
        return {"true_cfg_scale": guidance, "negative_prompt": negative}
    if family.name == "zimage":
        return {"guidance_scale": guidance, "negative_prompt": [family.negative_prompt] * len(PROMPTS)}
    if family.name == "sana":  # no aspect-ratio binning: the engine takes the size as configured
        return {"guidance_scale": guidance, "negative_prompt": family.negative_prompt, "use_resolution_binning": False}
    return {"guidance_scale": guidance}


def _pipeline_call(family: Family, pipe: Any, guidance: float, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents in the engine's layout, images in [0, 1]) of one pipeline call."""
    captured: dict[str, torch.Tensor] = {}

    def keep_latents(pipeline: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        captured["latents"] = tensors["latents"]
        return {}

    with torch.no_grad():
        images = pipe(
            prompt=list(PROMPTS),  # a copy: Z-Image's encoder rewrites the list in place
            height=family.height,
            width=family.width,
            num_inference_steps=steps,
            max_sequence_length=family.max_sequence_length,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            callback_on_step_end=keep_latents,
            callback_on_step_end_tensor_inputs=["latents"],
            **_pipeline_guidance(family, guidance),
        ).images
    return captured["latents"].float(), images.float()


PARITY_CASES = [
    ("qwenimage", {}, False),
    ("qwenimage", {}, True),
    ("flux2", {}, False),
    ("flux2", {}, True),
    ("flux2", {"is_distilled": True}, True),  # step-distilled: guidance ignored, as in the pipeline
    ("zimage", {}, False),
    ("zimage", {}, True),
    ("sana", {}, False),
    ("sana", {}, True),
]


@pytest.mark.parametrize(("name", "options", "cfg"), PARITY_CASES)
def test_ode_plan_reproduces_pipeline(name: str, options: dict[str, Any], cfg: bool) -> None:
    family = FAMILIES[name]
    guidance = family.guidance if cfg else family.no_guidance
    backbone = load_backbone(_config(family, options))
    assert isinstance(backbone, DiffusersBackbone) and backbone.family == name

    conditioning = backbone.encode_prompts(PROMPTS)
    schedule = backbone.schedule(PARITY_STEPS)
    noise = backbone.initial_noise(len(PROMPTS), torch.Generator().manual_seed(7))
    with torch.no_grad():
        rollout = rollout_trees(
            backbone.model_fn(conditioning, guidance, schedule), schedule.stepper(0.0), (ODE,) * PARITY_STEPS, noise,
            torch.arange(len(PROMPTS)),
        )
    latents, images = _pipeline_call(family, load_pipeline_like_a_user(tiny_pipeline(name, **options)), guidance, PARITY_STEPS, 7)

    difference = (rollout.leaf_latents - latents).abs().max().item()
    print(f"{name} {options} guidance={guidance}: max |engine - pipeline| latents = {difference:.3g}")
    assert difference < 1e-5
    decoded = backbone.decode(rollout.leaf_latents)
    assert decoded.shape == images.shape == (len(PROMPTS), 3, family.height, family.width)
    assert (decoded - images).abs().max().item() < 1e-4


def test_text_padding_is_exercised() -> None:
    """Qwen-Image and Z-Image prompts of different lengths are padded and masked; FLUX.2 pads to a fixed length."""
    for name in ("qwenimage", "zimage"):
        conditioning = load_backbone(_config(FAMILIES[name])).encode_prompts(PROMPTS)
        assert conditioning.prompt_mask is not None and not bool(conditioning.prompt_mask.all()), name
        assert conditioning.prompt_embeds.shape[1] != conditioning.negative_prompt_embeds.shape[1], name
    conditioning = load_backbone(_config(FAMILIES["flux2"])).encode_prompts(PROMPTS)
    assert conditioning.prompt_mask is None and conditioning.prompt_embeds.shape[1] == FAMILIES["flux2"].max_sequence_length


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tree_iteration_rescores_to_ratio_one_and_updates(name: str) -> None:
    family = FAMILIES[name]
    torch.manual_seed(0)
    backbone = load_backbone(_config(family))
    without_gradient: tuple[str, ...] = ()
    if name == "qwenimage":  # the last block's text-stream output is discarded, so its to_add_out LoRA is unused
        last = f"transformer_blocks.{len(backbone.denoiser.transformer_blocks) - 1}.attn.to_add_out"
        without_gradient = (f"{last}.lora_A.default.weight", f"{last}.lora_B.default.weight")
    check_tree_iteration(backbone, family.guidance, family.noise_level, without_gradient)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_round_trip_through_load_lora_weights(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    backbone = load_backbone(_config(family))
    assert {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in backbone.denoiser.named_parameters() if p.requires_grad
    )
    base = training._engine_latents(backbone, seed=5, guidance=family.guidance)
    training._train(backbone, guidance=family.guidance)
    trained = training._engine_latents(backbone, seed=5, guidance=family.guidance)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    reference = training._engine_latents(backbone, seed=5, denoiser=backbone.reference_denoiser(), guidance=family.guidance)
    assert torch.equal(reference, base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline(name))
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora, _ = _pipeline_call(family, pipe, family.guidance, training.STEPS, seed=5)
    pipe.disable_lora()
    without_lora, _ = _pipeline_call(family, pipe, family.guidance, training.STEPS, seed=5)

    difference = (with_lora - trained).abs().max().item()
    print(f"{name}: max |diffusers + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5
    assert (without_lora - base).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_finetune_moves_weights_but_not_the_reference(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    backbone = load_backbone(_config(family, full_finetune=True), with_reference=True)
    parameters = backbone.trainable_parameters()
    assert len(parameters) == len(list(backbone.denoiser.parameters()))
    before = training._engine_latents(backbone, seed=2, guidance=family.guidance)
    weights = [p.detach().clone() for p in parameters]

    training._train(backbone, steps=1, lr=1e-2, guidance=family.guidance)
    assert any(not torch.equal(p, w) for p, w in zip(parameters, weights))
    assert (training._engine_latents(backbone, seed=2, guidance=family.guidance) - before).abs().max().item() > 1e-4
    reference = backbone.reference_denoiser()
    assert torch.equal(training._engine_latents(backbone, seed=2, denoiser=reference, guidance=family.guidance), before)
    assert all(not p.requires_grad for p in reference.parameters())

    backbone.save_trained(tmp_path / "full")
    reloaded = type(backbone.denoiser).from_pretrained(tmp_path / "full", subfolder="transformer")
    for (key, saved), current in zip(reloaded.state_dict().items(), backbone.denoiser.state_dict().values()):
        assert torch.equal(saved, current), key


@pytest.mark.parametrize("name", list(FAMILIES))
def test_image_size_off_the_latent_grid_is_a_config_error(name: str) -> None:
    family = FAMILIES[name]
    with pytest.raises(ConfigError, match="model.height"):
        load_backbone(_config(family, height=family.height + 1))


def test_flow_sigma_schedule_copies_the_multistep_grid_and_refuses_one_without_flow_sigmas() -> None:
    """Wan's UniPC and Sana's DPM-solver are sampled on their flow sigma grid; without ``use_flow_sigmas`` there is none."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from treegrpo.errors import ConfigError
    from treegrpo.models.common import flow_sigma_schedule

    flow = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    before = flow.timesteps.clone()
    schedule = flow_sigma_schedule(flow, 5, "cpu", "Sana")
    reference = DPMSolverMultistepScheduler.from_config(flow.config)
    reference.set_timesteps(5)
    assert torch.equal(schedule.sigmas, reference.sigmas.float()) and torch.equal(schedule.timesteps, reference.timesteps)
    assert torch.equal(flow.timesteps, before) and len(schedule.timesteps) == 5  # the pipeline's own scheduler untouched
    with pytest.raises(ConfigError, match="the Sana pipeline's DPMSolverMultistepScheduler has use_flow_sigmas=false"):
        flow_sigma_schedule(DPMSolverMultistepScheduler(use_flow_sigmas=False), 5, "cpu", "Sana")
