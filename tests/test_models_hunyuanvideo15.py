"""HunyuanVideo 1.5 text-to-video through the engine, checked against diffusers' own ``HunyuanVideo15Pipeline``.

Tiny random models (fp32, 32 x 48 pixels, 5 frames = 2 latent frames; one prompt quotes glyph text,
one does not): the ODE plan reproduces the pipeline's final latents with and without CFG (the
pipeline's guider set to the same scale) and its decoded clip; a tree iteration re-scores to ratio 1
before any update; a saved LoRA loaded with the transformer's ``load_lora_adapter`` (the pipeline has
no ``load_lora_weights``) gives the trained policy; full fine-tuning moves the weights but not the
reference. Run with ``-s`` to see the measured differences.

Speed: the pipeline pads every prompt to 1000 Qwen tokens and 256 ByT5 tokens and adds 729 (masked)
image tokens, so each of its tiny forwards costs ~0.3 s (the adapter drops that padding). Except in the
CFG parity test, both the engine's pipeline and the reference pipeline are shortened the way a user can
(:func:`_shortened`: the pipeline's own attributes, a short system message whose template prefix is what
``prompt_template_encode_start_idx`` crops); the adapter reads them from the pipeline, so both sides
still see the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from tests.test_models_training import train_toward_zero
from tests.test_models_tree import check_tree_iteration, ode_latents
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads

PROMPTS = ['a shop sign saying "OPEN"', "two cats"]
"""The first prompt quotes glyph text (ByT5 stream), the second does not (zero glyph rows, all masked)."""
STEPS = 3
HEIGHT, WIDTH, FRAMES = 32, 48, 5
GUIDANCE, NEGATIVE = 6.0, "blurry"


SYSTEM = "Describe the video."


def _shortened(pipe: Any) -> Any:
    """``pipe`` with 40 Qwen tokens after a short system prompt's template prefix, 16 ByT5 tokens, 8 image tokens."""
    prefix = pipe.tokenizer(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n", add_special_tokens=False)
    pipe.system_message, pipe.prompt_template_encode_start_idx = SYSTEM, len(prefix["input_ids"])
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 40, 16, 8
    return pipe


def _backbone(**overrides: Any) -> DiffusersBackbone:
    backbone = load_backbone(_config(**{key: value for key, value in overrides.items() if key != "with_reference"}),
                             with_reference=bool(overrides.get("with_reference", False)))
    _shortened(backbone.pipe)
    return backbone


def _user_pipeline() -> Any:
    return _shortened(load_pipeline_like_a_user(tiny_pipeline("hunyuanvideo15")))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(**overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline("hunyuanvideo15")), "dtype": "fp32", "device": "cpu", "height": HEIGHT,
        "width": WIDTH, "num_frames": FRAMES, "negative_prompt": NEGATIVE, "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine_latents(backbone: DiffusersBackbone, guidance: float, seed: int = 7, denoiser: Any = None) -> torch.Tensor:
    """Final latents of the engine's ODE plan from the pipeline's initial noise."""
    return ode_latents(backbone, PROMPTS, STEPS, guidance, seed, denoiser)


def _pipeline(pipe: Any, guidance: float, output_type: str = "latent", prompts: Any = None, seed: int = 7) -> torch.Tensor:
    """``HunyuanVideo15Pipeline(...)`` frames with its guider at ``guidance``: latents, or clips ``[B, F, 3, H, W]``."""
    from diffusers import ClassifierFreeGuidance

    pipe.guider = ClassifierFreeGuidance(guidance_scale=guidance)
    prompts = PROMPTS if prompts is None else prompts
    with torch.no_grad():  # one negative prompt per prompt: the pipeline does not repeat a single one
        return pipe(
            prompt=prompts, negative_prompt=[NEGATIVE] * len(prompts), height=HEIGHT, width=WIDTH,
            num_frames=FRAMES, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
        ).frames.float()


@pytest.mark.parametrize(("guidance", "short"), [(1.0, True), (GUIDANCE, False)])
def test_ode_plan_reproduces_the_hunyuanvideo15_pipeline(guidance: float, short: bool) -> None:
    """With CFG both sides keep the pipeline's own lengths (1000 Qwen, 256 ByT5, 729 image tokens, most of them
    padding that the adapter drops)."""
    backbone = _backbone() if short else load_backbone(_config())
    assert backbone.family == "hunyuanvideo15"
    latents = _engine_latents(backbone, guidance)
    pipe = _user_pipeline() if short else load_pipeline_like_a_user(tiny_pipeline("hunyuanvideo15"))
    difference = (latents - _pipeline(pipe, guidance)).abs().max().item()
    print(f"hunyuanvideo15 guidance={guidance} short={short}: max |engine - pipeline| latents = {difference:.3g}")
    assert latents.shape == (2, 4, 2, HEIGHT // 8, WIDTH // 8) and difference < 1e-5
    clips = backbone.decode(latents)
    assert clips.shape == (2, FRAMES, 3, HEIGHT, WIDTH)
    # the pipeline decodes a batch of one only (its VAE's causal mask does not broadcast over clips): the first
    # prompt alone draws the first row of the same noise
    decoded = (clips[:1] - _pipeline(pipe, guidance, "pt", prompts=PROMPTS[:1])).abs().max().item()
    print(f"hunyuanvideo15 guidance={guidance} short={short}: max |engine - pipeline| decoded clip = {decoded:.3g}")
    assert decoded < 1e-4


def test_tree_iteration_rescores_to_ratio_one_and_updates() -> None:
    torch.manual_seed(0)
    # one double-stream block: the text stream's output projection of the last block reaches no output
    without = tuple(f"transformer_blocks.0.attn.to_add_out.lora_{ab}.default.weight" for ab in "AB")
    check_tree_iteration(_backbone(), GUIDANCE, 0.7, without_gradient=without)


def test_lora_round_trip_through_load_lora_adapter(tmp_path: Path) -> None:
    backbone = _backbone()
    base = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, row_steps=[0, 1])
    trained = _engine_latents(backbone, GUIDANCE)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser()), base)

    backbone.save_trained(tmp_path / "lora")
    pipe = _user_pipeline()
    pipe.transformer.load_lora_adapter(tmp_path / "lora", use_safetensors=True)
    difference = (_pipeline(pipe, GUIDANCE) - trained).abs().max().item()
    print(f"hunyuanvideo15: max |pipeline + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5


def test_full_finetune_moves_weights_but_not_the_reference(tmp_path: Path) -> None:
    backbone = _backbone(full_finetune=True, with_reference=True)
    assert len(backbone.trainable_parameters()) == len(list(backbone.denoiser.parameters()))
    before = _engine_latents(backbone, GUIDANCE)
    train_toward_zero(backbone, PROMPTS, GUIDANCE, STEPS, steps=1, lr=1e-2, row_steps=[0, 1])
    after = _engine_latents(backbone, GUIDANCE)
    assert (after - before).abs().max().item() > 1e-4
    assert torch.equal(_engine_latents(backbone, GUIDANCE, denoiser=backbone.reference_denoiser()), before)

    backbone.save_trained(tmp_path / "full")
    pipe = _user_pipeline()
    pipe.transformer = type(pipe.transformer).from_pretrained(tmp_path / "full", subfolder="transformer")
    assert (_pipeline(pipe, GUIDANCE) - after).abs().max().item() < 1e-5


def test_bad_hunyuanvideo15_settings_are_config_errors() -> None:
    from diffusers import ClassifierFreeGuidance

    with pytest.raises(ConfigError, match="num_frames"):
        load_backbone(_config(num_frames=6)).initial_noise(1, None)
    with pytest.raises(ConfigError, match="model.height"):
        load_backbone(_config(height=36))
    backbone = load_backbone(_config(), trainable=False)
    pipe = backbone.pipe
    pipe.guider = ClassifierFreeGuidance(guidance_scale=6.0, guidance_rescale=0.7)
    with pytest.raises(ConfigError, match="guidance_rescale"):
        type(backbone)(pipe, backbone.cfg, backbone.device, trainable=False)


def test_the_model_card_sets_the_guider_and_loads_the_lora_into_the_transformer(tmp_path: Path) -> None:
    """HunyuanVideo15Pipeline takes no guidance_scale and has no load_lora_weights: the snippet uses what it has."""
    from diffusers import ClassifierFreeGuidance

    from treegrpo.hub import model_card

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (run / "config.yaml").write_text("model: {path: hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v, height: 480, "
                                     "width: 480, num_frames: 53}\nsampling: {steps: 16, guidance_scale: 6.0}\n")
    card = model_card(run, "HunyuanVideo15Pipeline")
    assert "pipe.guider = pipe.guider.new(guidance_scale=6.0)" in card and "load_lora_weights" not in card
    assert 'frames = pipe("a prompt", height=480, width=480, num_frames=53, num_inference_steps=16).frames[0]' in card
    assert f'pipe.transformer.load_lora_adapter("{(run / "final").resolve()}", use_safetensors=True)' in card
    guider = ClassifierFreeGuidance(guidance_scale=1.0).new(guidance_scale=6.0)
    assert isinstance(guider, ClassifierFreeGuidance) and guider.guidance_scale == 6.0
