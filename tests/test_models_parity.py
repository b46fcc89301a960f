"""The engine's pure-ODE plan reproduces each diffusers pipeline's own output (fp32, tiny models)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, load_pipeline_like_a_user, tiny_pipeline, torch_threads
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE

SIZE = 16
STEPS = 3
PROMPTS = ["a red cube", "two cats"]

CASES = [
    # (family, builder options, engine guidance, true_cfg_scale, pipeline call arguments)
    ("sd3", {}, 1.0, 1.0, {"guidance_scale": 1.0}),
    ("sd3", {}, 4.5, 1.0, {"guidance_scale": 4.5}),
    ("flux", {}, 3.5, 1.0, {"guidance_scale": 3.5}),
    ("flux", {}, 3.5, 2.5, {"guidance_scale": 3.5, "true_cfg_scale": 2.5, "negative_prompt": "blurry"}),
    ("flux", {"guidance_embeds": False}, 2.0, 1.0, {"true_cfg_scale": 2.0, "negative_prompt": "blurry"}),
    ("sd", {}, 1.0, 1.0, {"guidance_scale": 1.0}),
    ("sd", {}, 7.5, 1.0, {"guidance_scale": 7.5}),
    ("sd", {"prediction_type": "v_prediction"}, 5.0, 1.0, {"guidance_scale": 5.0}),
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(path: Any, negative_prompt: str = "", true_cfg_scale: float = 1.0) -> ModelConfig:
    return ModelConfig(
        path=str(path),
        dtype="fp32",
        device="cpu",
        height=SIZE,
        width=SIZE,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        negative_prompt=negative_prompt,
        true_cfg_scale=true_cfg_scale,
        lora=LoraConfig(rank=4, alpha=8.0),
    )


def _pipeline_call(family: str, pipe: Any, arguments: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, decoded images) of one pipeline call; latents captured by a step callback."""
    captured: dict[str, torch.Tensor] = {}

    def keep_latents(pipeline: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        captured["latents"] = tensors["latents"]
        return {}

    extra: dict[str, Any] = {"height": SIZE, "width": SIZE}
    if family != "sd":
        extra["max_sequence_length"] = TINY_MAX_SEQUENCE_LENGTH
    if family == "sd3" and "negative_prompt" not in arguments:
        extra["negative_prompt"] = ""
    images = pipe(
        PROMPTS,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        callback_on_step_end=keep_latents,
        callback_on_step_end_tensor_inputs=["latents"],
        **arguments,
        **extra,
    ).images
    return captured["latents"], images


@pytest.mark.parametrize(("family", "options", "guidance", "true_cfg", "arguments"), CASES)
def test_ode_plan_reproduces_pipeline(
    family: str, options: dict[str, Any], guidance: float, true_cfg: float, arguments: dict[str, Any]
) -> None:
    path = tiny_pipeline(family, **options)
    backbone = load_backbone(_config(path, arguments.get("negative_prompt", ""), true_cfg))
    assert isinstance(backbone, DiffusersBackbone) and backbone.family == family

    conditioning = backbone.encode_prompts(PROMPTS)
    schedule = backbone.schedule(STEPS)
    noise = backbone.initial_noise(len(PROMPTS), torch.Generator().manual_seed(7))
    with torch.no_grad():
        rollout = rollout_trees(
            backbone.model_fn(conditioning, guidance, schedule), schedule.stepper(0.0), (ODE,) * STEPS, noise,
            torch.arange(len(PROMPTS)),
        )
    pipe = load_pipeline_like_a_user(path)
    if family == "sd":
        pipe.scheduler = backbone.pipe.scheduler  # the DDIM scheduler the engine follows
    latents, images = _pipeline_call(family, pipe, arguments, seed=7)

    difference = (rollout.leaf_latents - latents.float()).abs().max().item()
    print(f"{family} {options} guidance={guidance} true_cfg={true_cfg}: max |engine - pipeline| = {difference:.3g}")
    assert difference < 1e-5
    decoded = backbone.decode(rollout.leaf_latents)
    assert decoded.shape == images.shape == (len(PROMPTS), 3, SIZE, SIZE)
    assert decoded.dtype == torch.float32 and 0 <= decoded.min() and decoded.max() <= 1
    assert (decoded - images.float()).abs().max().item() < 1e-4


def test_flow_stepper_follows_the_scheduler_tables() -> None:
    """The schedule's sigmas end at 0, its timesteps are sigma * 1000, and the stepper uses those sigmas."""
    backbone = load_backbone(_config(tiny_pipeline("flux")))
    schedule = backbone.schedule(4)
    stepper = schedule.stepper(0.7)
    assert stepper.num_steps == schedule.num_steps == 4 and float(schedule.sigmas[-1]) == 0.0
    assert torch.allclose(schedule.timesteps, schedule.sigmas[:-1] * 1000)
    assert torch.equal(stepper.sigmas, schedule.sigmas)
