"""Wan 2.1 / 2.2 text-to-video through the engine, checked against diffusers' own ``WanPipeline``.

Tiny random models (fp32, 16 x 32 pixels, 5 frames = 2 latent frames): the ODE plan reproduces the
pipeline's final latents and decoded clips with and without CFG (one expert, and Wan 2.2's two
experts switched at ``boundary_ratio``); a tree iteration re-scores to ratio 1 before any update; a
saved LoRA loaded with ``WanPipeline.load_lora_weights`` gives the trained policy; full fine-tuning
moves the weights but not the reference; the expert choice follows and checks the tree's window.
Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import torch

from tests.test_models_training import train_toward_zero
from tests.test_models_tree import check_tree_iteration, ode_latents
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone, TrainingWindow
from treegrpo.models.wan import TwoExperts, resolve_expert

PROMPTS = ["a red cube", "two cats"]
STEPS = 3
"""With the tiny scheduler (shift 3) and boundary 0.7: steps 0 and 1 high-noise, step 2 low-noise."""
HEIGHT, WIDTH, FRAMES, TOKENS = 16, 32, 5, 16
GUIDANCE, NEGATIVE = 5.0, "blurry"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(two_experts: bool = False, **overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline("wan", two_experts=two_experts)),
        "dtype": "fp32",
        "device": "cpu",
        "height": HEIGHT,
        "width": WIDTH,
        "num_frames": FRAMES,
        "max_sequence_length": TOKENS,
        "negative_prompt": NEGATIVE,
        "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine_latents(backbone: DiffusersBackbone, guidance: float, seed: int = 7, denoiser: Any = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise."""
    return ode_latents(backbone, PROMPTS, STEPS, guidance, seed, denoiser)


def _pipeline(pipe: Any, guidance: float, output_type: str, seed: int = 7) -> torch.Tensor:
    """``WanPipeline(...)`` frames: latents (``"latent"``) or clips ``[B, F, 3, H, W]`` (``"pt"``)."""
    with torch.no_grad():
        return pipe(
            prompt=PROMPTS, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
            num_inference_steps=STEPS, max_sequence_length=TOKENS, guidance_scale=guidance,
            generator=torch.Generator().manual_seed(seed), output_type=output_type,
        ).frames.float()


@pytest.mark.parametrize("two_experts", [False, True])
@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_ode_plan_reproduces_wan_pipeline(two_experts: bool, guidance: float) -> None:
    backbone = load_backbone(_config(two_experts))
    assert backbone.family == "wan"
    latents = _engine_latents(backbone, guidance)
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan", two_experts=two_experts))
    expected = _pipeline(pipe, guidance, "latent")
    difference = (latents - expected).abs().max().item()
    print(f"wan two_experts={two_experts} guidance={guidance}: max |engine - pipeline| latents = {difference:.3g}")
    assert latents.shape == (2, 16, 2, HEIGHT // 8, WIDTH // 8) and difference < 1e-5
    clips = backbone.decode(latents)
    assert clips.shape == (2, FRAMES, 3, HEIGHT, WIDTH)
    assert (clips - _pipeline(pipe, guidance, "pt")).abs().max().item() < 1e-4


def test_two_experts_switch_at_the_boundary() -> None:
    """Step 2 is the low-noise expert's: calling the high-noise one there changes the result."""
    backbone = load_backbone(_config(True))
    assert isinstance(backbone.denoiser, TwoExperts) and backbone._high_steps(STEPS) == {0, 1}
    routed = _engine_latents(backbone, GUIDANCE)
    pipe = backbone.pipe
    pipe.transformer_2, low = pipe.transformer, pipe.transformer_2
    backbone.denoiser.low = backbone.denoiser.high
    try:
        high_only = _engine_latents(backbone, GUIDANCE)
    finally:
        pipe.transformer_2 = backbone.denoiser.low = low
    assert (routed - high_only).abs().max().item() > 1e-3


@pytest.mark.parametrize("two_experts", [False, True])
def test_tree_iteration_rescores_to_ratio_one_and_updates(two_experts: bool) -> None:
    torch.manual_seed(0)
    backbone = load_backbone(_config(two_experts))
    if two_experts:  # check_tree_iteration's window (steps 1-2 of 4) crosses the boundary: both experts train
        assert backbone._high_steps(4) == {0, 1}
    check_tree_iteration(backbone, GUIDANCE, 0.7)


@pytest.mark.parametrize("two_experts", [False, True])
def test_lora_round_trip_through_load_lora_weights(two_experts: bool, tmp_path: Path) -> None:
    backbone = load_backbone(_config(two_experts))
    base = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, row_steps=[0, 2])  # both experts in one call
    trained = _engine_latents(backbone, GUIDANCE)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan", two_experts=two_experts))
    pipe.load_lora_weights(tmp_path / "lora")
    if two_experts:
        pipe.load_lora_weights(tmp_path / "lora" / "transformer_2", load_into_transformer_2=True)
    difference = (_pipeline(pipe, GUIDANCE, "latent") - trained).abs().max().item()
    print(f"wan two_experts={two_experts}: max |WanPipeline + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5


def test_low_expert_lora_loads_into_transformer_2(tmp_path: Path) -> None:
    window = TrainingWindow(num_steps=STEPS, steps=(2,))
    backbone = load_backbone(_config(True), training_window=window)
    assert backbone.denoiser is backbone.pipe.transformer_2 and not any(
        p.requires_grad for p in backbone.pipe.transformer.parameters()
    )
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, row_steps=[0, 2])  # both experts in one call
    trained = _engine_latents(backbone, GUIDANCE)
    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan", two_experts=True))
    pipe.load_lora_weights(tmp_path / "lora", load_into_transformer_2=True)
    assert (_pipeline(pipe, GUIDANCE, "latent") - trained).abs().max().item() < 1e-5


@pytest.mark.parametrize("two_experts", [False, True])
def test_full_finetune_moves_weights_but_not_the_reference(two_experts: bool, tmp_path: Path) -> None:
    backbone = load_backbone(_config(two_experts, full_finetune=True), with_reference=True)
    parameters = backbone.trainable_parameters()
    assert len(parameters) == len(list(backbone.denoiser.parameters()))
    before = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, steps=1, lr=1e-2, row_steps=[0, 2])
    assert (_engine_latents(backbone, GUIDANCE) - before).abs().max().item() > 1e-4
    assert torch.equal(_engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser()), before)

    backbone.save_trained(tmp_path / "full")
    pipe = load_pipeline_like_a_user(tiny_pipeline("wan", two_experts=two_experts))
    pipe.transformer = type(pipe.transformer).from_pretrained(tmp_path / "full", subfolder="transformer")
    if two_experts:
        pipe.transformer_2 = type(pipe.transformer).from_pretrained(tmp_path / "full", subfolder="transformer_2")
    assert (_pipeline(pipe, GUIDANCE, "latent") - _engine_latents(backbone, GUIDANCE)).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("requested", "trained", "expected"),
    [("auto", {0, 1}, "high"), ("auto", {2}, "low"), ("auto", {1, 2}, "both"), ("auto", None, "both"),
     ("high", {0}, "high"), ("both", {0}, "both")],
)
def test_expert_follows_the_window(requested: str, trained: Optional[set[int]], expected: str) -> None:
    assert resolve_expert(requested, True, {0, 1}, trained) == expected


@pytest.mark.parametrize(("requested", "trained"), [("high", {1, 2}), ("low", {1, 2})])
def test_window_across_the_boundary_with_one_expert_is_a_config_error(requested: str, trained: set[int]) -> None:
    with pytest.raises(ConfigError, match="model.expert"):
        load_backbone(_config(True, expert=requested), training_window=TrainingWindow(STEPS, tuple(sorted(trained))))


def test_bad_wan_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="two-expert"):
        load_backbone(_config(False, expert="low"))
    with pytest.raises(ConfigError, match="num_frames"):
        load_backbone(_config(False, num_frames=6)).initial_noise(1, None)
    with pytest.raises(ConfigError, match="model.height"):
        load_backbone(_config(False, height=24))
    assert resolve_expert("auto", False, set(), {0, 5}) == "high"


# ----------------------------------------------------------------------------- rewards and files for clips


class _Brightness:
    """An image reward: mean pixel value; records how many images it saw."""

    name = "brightness"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, images: torch.Tensor, prompts: Any) -> torch.Tensor:
        assert images.dim() == 4 and len(prompts) == images.shape[0]
        self.seen.append(int(images.shape[0]))
        return images.mean(dim=(1, 2, 3))


class _ClipLength:
    """A video reward: takes whole clips."""

    name = "length"
    takes_video = True

    def __call__(self, images: torch.Tensor, prompts: Any) -> torch.Tensor:
        return torch.full((images.shape[0],), float(images.shape[1]))


def test_image_rewards_score_sampled_frames_and_video_rewards_get_clips() -> None:
    from treegrpo.rewards.multi import MultiReward
    from treegrpo.rewards.video import FrameSampledReward, frame_indices

    assert frame_indices(9, 3) == [0, 4, 8] and frame_indices(9, "first") == [0] and frame_indices(3, "all") == [0, 1, 2]
    assert frame_indices(5, 1) == [2] and frame_indices(2, 4) == [0, 1]
    clips = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1, 1, 1).expand(2, 5, 3, 2, 2) / 10
    brightness = _Brightness()
    multi = MultiReward({"brightness": brightness, "length": _ClipLength()})
    components = multi.components(clips, ["a", "b"])
    expected = clips[:, [0, 1, 3, 4]].mean(dim=(1, 2, 3, 4))  # default: 4 frames evenly spaced over 5
    assert torch.allclose(components["brightness"], expected) and brightness.seen == [8]
    assert components["length"].tolist() == [5.0, 5.0]
    first = FrameSampledReward(_Brightness(), "first")(clips, ["a", "b"])
    assert torch.allclose(first, clips[:, 0].mean(dim=(1, 2, 3)))
    with pytest.raises(ConfigError, match="frames"):
        FrameSampledReward(_Brightness(), "middle")


def test_steps_ever_trained_follow_the_window() -> None:
    from treegrpo.engine.methods import TreeConfig, steps_ever_trained

    assert steps_ever_trained(TreeConfig(schedule="tree", window=2, window_start=1, window_placement="fixed"), 6) == (1, 2)
    assert steps_ever_trained(TreeConfig(schedule="tree", window=2, window_placement="shifting"), 6) == (0, 1, 2, 3, 4)
    assert steps_ever_trained(TreeConfig(schedule="flat"), 4) == (0, 1, 2, 3)


def test_clips_are_written_as_video(tmp_path: Path) -> None:
    from treegrpo.video_io import save_gif, save_video

    clip = torch.rand(5, 3, 16, 32)
    file = save_video(clip, tmp_path / "clip")
    assert file.suffix in (".mp4", ".gif") and file.stat().st_size > 0
    from PIL import Image

    gif = save_gif((clip.permute(0, 2, 3, 1).numpy() * 255).astype("uint8"), tmp_path / "clip.gif")
    assert Image.open(gif).n_frames == 5
