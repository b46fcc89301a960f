"""LTX-2 text-to-video (audio carried along) through the engine, checked against diffusers' own ``LTX2Pipeline``.

Tiny random model (fp32, 32 x 64 pixels, 5 frames = 3 latent frames of 4 x 8 tokens, 5 audio latent
frames): the ODE plan from the pipeline's own noise reproduces its final video latents, its audio
latents and its decoded clips, with and without CFG (the pipeline's STG, modality guidance and
guidance rescale switched off); the audio does steer the video (so carrying it is needed); a tree
iteration re-scores to ratio 1 and updates; the SDE leaves the audio on its ODE step; a saved LoRA
loaded with ``LTX2Pipeline.load_lora_weights`` gives the trained policy; full fine-tuning moves the
weights but not the reference. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from tests.test_models_training import train_toward_zero
from tests.test_models_tree import check_tree_iteration, ode_latents
from treegrpo.errors import ConfigError
from treegrpo.math.sampling import SdeType
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.ltx2 import LTX2Backbone
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads

PROMPTS = ["a red cube", "two cats"]
STEPS = 3
HEIGHT, WIDTH, FRAMES, TOKENS = 32, 64, 5, 16
GUIDANCE, NEGATIVE = 4.0, "blurry"
ONLY_CFG = dict(stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, guidance_rescale=0.0,
                audio_guidance_rescale=0.0)
"""The pipeline's other guidance terms off (its defaults: STG 1, modality 3, rescale 0.7)."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def pipe() -> Any:
    """One user-loaded pipeline for the module (tests that load LoRA weights build their own)."""
    return load_pipeline_like_a_user(tiny_pipeline("ltx2"))


def _config(**overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline("ltx2")), "dtype": "fp32", "device": "cpu", "height": HEIGHT, "width": WIDTH,
        "num_frames": FRAMES, "max_sequence_length": TOKENS, "negative_prompt": NEGATIVE,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine_latents(backbone: LTX2Backbone, guidance: float, seed: int = 7, denoiser: Any = None,
                    noise: Any = None) -> torch.Tensor:
    """Final rows (video then audio) of the engine's ODE plan from the pipeline's initial noise."""
    return ode_latents(backbone, PROMPTS, STEPS, guidance, seed, denoiser, noise)


def _pipeline(pipe: Any, guidance: float, output_type: str, seed: int = 7) -> Any:
    """``LTX2Pipeline(...)``: (video, audio) latents as ``output_type="latent"`` gives them, or clips (``"pt"``)."""
    with torch.no_grad():
        return pipe(
            prompt=PROMPTS, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
            num_inference_steps=STEPS, max_sequence_length=TOKENS, guidance_scale=guidance,
            audio_guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type=output_type,
            **ONLY_CFG,
        )


def _audio(backbone: LTX2Backbone, rows: torch.Tensor) -> torch.Tensor:
    """The audio part of rows as the pipeline returns ``output_type="latent"`` audio: denormalised, ``[B, C, L, M]``."""
    layout, pipe = backbone._layout(), backbone.pipe
    packed = rows[:, layout.video_size :].reshape(rows.shape[0], layout.audio_frames, layout.audio_channels)
    packed = pipe._denormalize_audio_latents(packed, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std)
    mel_bins = layout.audio_channels // pipe.audio_vae.config.latent_channels
    unpacked: torch.Tensor = pipe._unpack_audio_latents(packed, layout.audio_frames, num_mel_bins=mel_bins)
    return unpacked


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_ode_plan_reproduces_ltx2_pipeline(guidance: float, pipe: Any) -> None:
    backbone = load_backbone(_config())
    assert isinstance(backbone, LTX2Backbone)
    rows = _engine_latents(backbone, guidance)
    expected = _pipeline(pipe, guidance, "latent")
    video = backbone._to_vae_latents(rows)
    video_difference = (video - expected.frames).abs().max().item()
    audio_difference = (_audio(backbone, rows) - expected.audio).abs().max().item()
    print(f"ltx2 guidance={guidance}: max |engine - pipeline| video latents = {video_difference:.3g}, "
          f"audio latents = {audio_difference:.3g}")
    assert video.shape == (2, 4, 3, HEIGHT // 8, WIDTH // 8) and video_difference < 1e-5 and audio_difference < 1e-5
    clips = backbone.decode(rows)
    assert clips.shape == (2, FRAMES, 3, HEIGHT, WIDTH)
    clip_difference = (clips - _pipeline(pipe, guidance, "pt").frames).abs().max().item()
    print(f"ltx2 guidance={guidance}: max |engine - pipeline| decoded clips = {clip_difference:.3g}")
    assert clip_difference < 1e-4


def test_audio_steers_the_video_and_sde_steps_leave_it_on_the_ode() -> None:
    """Other audio noise changes the video (the streams are coupled); an SDE step scores and noises only the video."""
    backbone = load_backbone(_config(), trainable=False)
    video_size = backbone._layout().video_size
    noise = backbone.initial_noise(len(PROMPTS), torch.Generator().manual_seed(7))
    other = noise.clone()
    other[:, video_size:] = torch.randn(other[:, video_size:].shape, generator=torch.Generator().manual_seed(8))
    base, changed = _engine_latents(backbone, 1.0, noise=noise), _engine_latents(backbone, 1.0, noise=other)
    assert (base[:, :video_size] - changed[:, :video_size]).abs().max().item() > 1e-4

    velocity = torch.randn(noise.shape, generator=torch.Generator().manual_seed(9))
    index = torch.tensor([1, 1])
    for sde_type in SdeType:
        stepper = backbone.schedule(STEPS).stepper(0.7, sde_type)
        sde = stepper.step(velocity, noise, index, True, generator=torch.Generator().manual_seed(0))
        ode = stepper.step(velocity, noise, index, False)
        assert torch.equal(sde.prev_sample[:, video_size:], ode.prev_sample[:, video_size:])
        assert (sde.prev_sample[:, :video_size] - ode.prev_sample[:, :video_size]).abs().max().item() > 1e-3
        assert torch.all(sde.std[:, video_size:] == 0) and torch.all(sde.std[:, :video_size] > 0)
        rescored = stepper.step(velocity, noise, index, True, prev_sample=sde.prev_sample)
        assert torch.allclose(rescored.log_prob, sde.log_prob) and torch.equal(rescored.prev_sample, sde.prev_sample)


def test_tree_iteration_rescores_to_ratio_one_and_updates() -> None:
    torch.manual_seed(0)
    check_tree_iteration(load_backbone(_config()), GUIDANCE, 0.7)


def test_lora_round_trip_through_load_lora_weights(tmp_path: Path) -> None:
    backbone = load_backbone(_config())
    base = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, row_steps=[0, 2])
    trained = _engine_latents(backbone, GUIDANCE)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline("ltx2"))
    pipe.load_lora_weights(tmp_path / "lora")
    difference = (_pipeline(pipe, GUIDANCE, "latent").frames - backbone._to_vae_latents(trained)).abs().max().item()
    print(f"ltx2: max |LTX2Pipeline + saved LoRA - trained policy| video latents = {difference:.3g}")
    assert difference < 1e-5
    pipe.disable_lora()
    assert (_pipeline(pipe, GUIDANCE, "latent").frames - backbone._to_vae_latents(base)).abs().max().item() < 1e-5


def test_full_finetune_moves_weights_but_not_the_reference(tmp_path: Path) -> None:
    backbone = load_backbone(_config(full_finetune=True), with_reference=True)
    assert len(backbone.trainable_parameters()) == len(list(backbone.denoiser.parameters()))
    before = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, steps=1, lr=1e-2, row_steps=[0, 2])
    after = _engine_latents(backbone, GUIDANCE)
    assert (after - before).abs().max().item() > 1e-4
    # Not bit-equal: the same fp32 weights give outputs about 1e-6 apart on CPU when they require grad (the
    # trained copy) and when they do not (the frozen reference), even under no_grad and before any update.
    reference = _engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser())
    assert (reference - before).abs().max().item() < 1e-5

    backbone.save_trained(tmp_path / "full")
    pipe = load_pipeline_like_a_user(tiny_pipeline("ltx2"))
    pipe.transformer = type(pipe.transformer).from_pretrained(tmp_path / "full", subfolder="transformer")
    assert (_pipeline(pipe, GUIDANCE, "latent").frames - backbone._to_vae_latents(after)).abs().max().item() < 1e-5


def test_bad_ltx2_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.num_frames must be 1 \\+ a multiple of 2"):
        load_backbone(_config(num_frames=6)).initial_noise(1, None)
    with pytest.raises(ConfigError, match="multiples of 32"):
        load_backbone(_config(height=48))


def test_one_treegrpo_trainer_iteration(tmp_path: Path) -> None:
    """The trainer's TreeGRPO iteration (k2 w2 tree, SDE branching on the video, frames scored by an image reward)."""
    import json

    from tests.test_trainer import tiny_values
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    values = tiny_values(tmp_path, iterations=1, eval_every=0, eval_at_start=False, ema=0.0)
    values["model"] = {"path": str(tiny_pipeline("ltx2")), "dtype": "fp32", "device": "cpu", "height": HEIGHT,
                       "width": WIDTH, "num_frames": FRAMES, "max_sequence_length": TOKENS, "lora": {"rank": 4, "alpha": 4}}
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}"]))
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["optimizer_steps"] >= 1 and record["grad_norm"] > 0 and (folder / "final").exists()
