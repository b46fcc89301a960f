"""LoRA export round trip through plain diffusers, the reference policy, and full fine-tuning."""

from __future__ import annotations

from pathlib import Path
import time
from typing import Any, Iterator, Optional, Sequence

import pytest
import torch

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, load_pipeline_like_a_user, tiny_pipeline, torch_threads
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.engine.rollout import rollout_trees
from treegrpo.math.plans import ODE

SIZE = 16
STEPS = 2
PROMPTS = ["a red cube", "two cats"]
GUIDANCE = {"sd3": 4.5, "flux": 3.5, "sd": 7.5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(family: str, **overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline(family)),
        "dtype": "fp32",
        "device": "cpu",
        "height": SIZE,
        "width": SIZE,
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def train_toward_zero(backbone: DiffusersBackbone, prompts: Sequence[Any], guidance: float, num_steps: int, *,
                      steps: int = 3, lr: float = 5e-2, row_steps: Optional[Sequence[int]] = None,
                      label: Optional[str] = None) -> None:
    """A few Adam steps pushing ``model_fn``'s outputs towards zero, enough to move a LoRA or a full fine-tune.

    ``row_steps``: each prompt's denoising step, the same every time (default: all at ``step % num_steps``);
    ``label``: print each step's seconds under that name.
    """
    model_fn = backbone.model_fn(backbone.encode_prompts(list(prompts)), guidance, backbone.schedule(num_steps))
    optimizer = torch.optim.Adam(backbone.trainable_parameters(), lr=lr)
    latents = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(3))
    for step in range(steps):
        started = time.perf_counter()
        index = (torch.tensor(list(row_steps)) if row_steps is not None
                 else torch.full((len(prompts),), step % num_steps, dtype=torch.long))
        loss = model_fn(latents, index, torch.arange(len(prompts))).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if label is not None:
            print(f"{label}: forward + backward + step of {len(prompts)} nodes = {time.perf_counter() - started:.3f} s")


def _train(backbone: DiffusersBackbone, steps: int = 3, lr: float = 5e-2, guidance: float | None = None) -> None:
    """:func:`train_toward_zero` on this file's prompts at the family's guidance (or ``guidance``)."""
    train_toward_zero(backbone, PROMPTS, GUIDANCE[backbone.family] if guidance is None else guidance, STEPS,
                      steps=steps, lr=lr)


def _engine_latents(
    backbone: DiffusersBackbone, seed: int, denoiser: Any = None, guidance: float | None = None
) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise (``denoiser``: the one called)."""
    conditioning = backbone.encode_prompts(PROMPTS)
    schedule = backbone.schedule(STEPS)
    stepper = schedule.stepper(0.0)
    noise = backbone.initial_noise(len(PROMPTS), torch.Generator().manual_seed(seed))
    guidance = GUIDANCE[backbone.family] if guidance is None else guidance
    model_fn = backbone.model_fn(conditioning, guidance, schedule, denoiser=denoiser)
    return rollout_trees(model_fn, stepper, (ODE,) * STEPS, noise, torch.arange(len(PROMPTS))).leaf_latents


def _pipeline_latents(family: str, pipe: Any, seed: int) -> torch.Tensor:
    """Final latents of the plain diffusers pipeline."""
    extra: dict[str, Any] = {"height": SIZE, "width": SIZE}
    if family != "sd":
        extra["max_sequence_length"] = TINY_MAX_SEQUENCE_LENGTH
    with torch.no_grad():
        return pipe(
            PROMPTS,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE[family],
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **extra,
        ).images.float()


@pytest.mark.parametrize("family", ["sd3", "flux", "sd"])
def test_lora_round_trip_through_load_lora_weights(family: str, tmp_path: Path) -> None:
    backbone = load_backbone(_config(family))
    base = _engine_latents(backbone, seed=5)
    assert all(p.dtype == torch.float32 for p in backbone.trainable_parameters())
    lora_names = {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert lora_names and all("lora_" in n for n in lora_names)

    _train(backbone)
    trained = _engine_latents(backbone, seed=5)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    reference = _engine_latents(backbone, seed=5, denoiser=backbone.reference_denoiser())
    assert torch.equal(reference, base)
    assert all(p.requires_grad for p in backbone.trainable_parameters())

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline(family))
    if family == "sd":
        pipe.scheduler = backbone.pipe.scheduler
    plain = _pipeline_latents(family, pipe, seed=5)
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = _pipeline_latents(family, pipe, seed=5)
    pipe.disable_lora()
    without_lora = _pipeline_latents(family, pipe, seed=5)

    difference = (with_lora - trained).abs().max().item()
    print(f"{family}: max |diffusers + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5
    assert (without_lora - base).abs().max().item() < 1e-5
    assert (plain - base).abs().max().item() < 1e-5


def test_full_finetune_moves_weights_but_not_the_reference(tmp_path: Path) -> None:
    backbone = load_backbone(_config("flux", full_finetune=True), with_reference=True)
    parameters = backbone.trainable_parameters()
    assert len(parameters) == len(list(backbone.denoiser.parameters()))
    assert not any("lora_" in n for n, _ in backbone.denoiser.named_parameters())
    before = _engine_latents(backbone, seed=2)
    weights = [p.detach().clone() for p in parameters]

    _train(backbone, steps=1, lr=1e-2)
    assert any(not torch.equal(p, w) for p, w in zip(parameters, weights))
    assert (_engine_latents(backbone, seed=2) - before).abs().max().item() > 1e-4
    assert torch.equal(_engine_latents(backbone, seed=2, denoiser=backbone.reference_denoiser()), before)
    assert all(not p.requires_grad for p in backbone.reference_denoiser().parameters())

    backbone.save_trained(tmp_path / "full")
    from diffusers import FluxTransformer2DModel

    reloaded = FluxTransformer2DModel.from_pretrained(tmp_path / "full", subfolder="transformer")
    assert (tmp_path / "full" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    for (name, saved), current in zip(reloaded.state_dict().items(), backbone.denoiser.state_dict().values()):
        assert torch.equal(saved, current), name

    # the FSDP export path: weights gathered whole and handed in, written in the same layout
    from treegrpo.runtime.fsdp import full_state_dict

    backbone.save_trained(tmp_path / "gathered", weights=full_state_dict(backbone.denoiser, trainable_only=False))
    regathered = FluxTransformer2DModel.from_pretrained(tmp_path / "gathered", subfolder="transformer")
    for (name, saved), current in zip(regathered.state_dict().items(), backbone.denoiser.state_dict().values()):
        assert torch.equal(saved, current), name


def test_full_finetune_without_reference_copy_makes_none() -> None:
    backbone = load_backbone(_config("flux", full_finetune=True))
    assert backbone._reference_copy is None
    with pytest.raises(RuntimeError, match="with_reference=True"):
        backbone.reference_denoiser()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        backbone = load_backbone(_config("sd3", gradient_checkpointing=checkpointing))
        conditioning = backbone.encode_prompts(PROMPTS[:1])
        for p in backbone.trainable_parameters():
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(p.numel()))
        latents = backbone.initial_noise(1, torch.Generator().manual_seed(0))
        out = backbone.model_fn(conditioning, 1.0, backbone.schedule(STEPS))(latents, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        out.square().mean().backward()
        assert backbone.denoiser.is_gradient_checkpointing == checkpointing
        grads.append(torch.cat([p.grad.flatten() for p in backbone.trainable_parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_full_finetune_keeps_fp32_master_weights_and_a_bf16_reference() -> None:
    backbone = load_backbone(_config("flux", full_finetune=True, dtype="bf16"), with_reference=True)
    assert all(p.dtype == torch.float32 for p in backbone.trainable_parameters())
    assert all(p.dtype == torch.bfloat16 for p in backbone.reference_denoiser().parameters())
    assert backbone.pipe.vae.dtype == torch.bfloat16
    _train(backbone, steps=1, lr=1e-4)
    conditioning = backbone.encode_prompts(PROMPTS)
    latents = backbone.initial_noise(2, torch.Generator().manual_seed(0))
    index = torch.zeros(2, dtype=torch.long)
    schedule = backbone.schedule(STEPS)
    policy = backbone.model_fn(conditioning, 3.5, schedule)(latents, index, torch.arange(2))
    reference = backbone.model_fn(conditioning, 3.5, schedule, denoiser=backbone.reference_denoiser())(
        latents, index, torch.arange(2)
    )
    assert policy.dtype == reference.dtype == torch.float32
    assert torch.isfinite(policy).all() and torch.isfinite(reference).all()


def test_frozen_backbone_for_sampling_loads_a_saved_lora(tmp_path: Path) -> None:
    """``trainable=False``: no adapter, nothing trainable; a saved LoRA loads through the pipeline."""
    trained_backbone = load_backbone(_config("sd"))
    _train(trained_backbone)
    trained = _engine_latents(trained_backbone, seed=4)
    trained_backbone.save_trained(tmp_path / "lora")

    backbone = load_backbone(_config("sd", dtype="bf16"), trainable=False)
    assert backbone.trainable_parameters() == []
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in backbone.denoiser.parameters())
    with pytest.raises(RuntimeError, match="trainable=False"):
        backbone.save_trained(tmp_path / "nothing")
    backbone = load_backbone(_config("sd"), trainable=False)
    backbone.pipe.load_lora_weights(tmp_path / "lora")
    assert (_engine_latents(backbone, seed=4) - trained).abs().max().item() < 1e-5
