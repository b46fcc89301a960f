"""Qwen-Image-Edit-2509 / 2511 (``QwenImageEditPlusPipeline``: one or more source images per prompt) through the
``qwenimage_edit`` adapter, checked against diffusers' own pipeline.

A tiny random pipeline (:func:`treegrpo.testing.tiny_edit_models.build_tiny_qwenimage_edit_plus`), fp32, a
non-square 32 x 64 output; one prompt with one source image and one with two, in one batch (the
adapter groups the rows by image count). The pipeline takes one prompt per call, so it runs once per
prompt from the engine's initial noise of that row. The engine's ODE plan reproduces its latents
without and with true CFG; a tree iteration re-scores to ratio 1; a trained LoRA loads through
``QwenImageEditPlusPipeline.load_lora_weights``; one trainer iteration (full fine-tuning) runs on a
.jsonl whose records carry ``images`` lists. Run with ``-s`` to see the measured differences.

The pipeline VAE-encodes each source at a 1024 x 1024 area and its own aspect ratio; the engine at
the output's area and aspect ratio (so rows batch), so the tests patch ``VAE_IMAGE_SIZE`` to the
output's area and give sources at the output's ratio. Qwen2.5-VL sees each source at
``CONDITION_IMAGE_SIZE`` in both, patched to 32 x 32 here to keep the tiny vision tower fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from tests.test_models_training import train_toward_zero
from tests import test_models_tree
from tests.test_models_editing import SourceBrightness, _write_jsonl
from tests.test_models_qwen_edit import HEIGHT, MAX_SEQUENCE_LENGTH, NEGATIVE, STEPS, TRUE_CFG, WIDTH, _image
from treegrpo.data import load_jsonl
from treegrpo.engine.rollout import rollout_trees
from treegrpo.errors import ConfigError
from treegrpo.math.plans import ODE
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.common import DiffusersBackbone
from treegrpo.prompts import DataError, EditPrompt, source_image_list
from treegrpo.testing.tiny_edit_models import tiny_edit_pipeline
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, torch_threads

PLUS = "qwenimage_edit_plus"
"""The tiny pipeline's name in :func:`tiny_edit_pipeline` (its family is ``qwenimage_edit``)."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _pipeline_image_areas(monkeypatch: pytest.MonkeyPatch) -> None:
    """VAE sources at the output's area (the engine's rule); the VL's condition images small (both sides read it)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", HEIGHT * WIDTH)
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "CONDITION_IMAGE_SIZE", 32 * 32)


def edit_prompts() -> list[str]:
    """One instruction with one source image, one with two (all at the output's 1 : 2 aspect ratio)."""
    return [EditPrompt("make it red", [_image(1)]), EditPrompt("put the cat on the sofa", [_image(2), _image(3, 16, 32)])]


def _config(**overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_edit_pipeline(PLUS)), "dtype": "fp32", "device": "cpu", "height": HEIGHT, "width": WIDTH,
        "max_sequence_length": MAX_SEQUENCE_LENGTH, "negative_prompt": NEGATIVE, "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _engine(backbone: DiffusersBackbone, seed: int, guidance: float = 1.0, denoiser: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial noise, final latents) of the engine's ODE plan on :func:`edit_prompts`."""
    prompts = edit_prompts()
    schedule = backbone.schedule(STEPS)
    model_fn = backbone.model_fn(backbone.encode_prompts(prompts), guidance, schedule, denoiser=denoiser)
    noise = backbone.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rollout = rollout_trees(model_fn, schedule.stepper(0.0), (ODE,) * STEPS, noise, torch.arange(len(prompts)))
    return noise, rollout.leaf_latents


def _pipeline(pipe: Any, noise: torch.Tensor, true_cfg: float = 1.0) -> torch.Tensor:
    """The pipeline's packed output latents, one call per prompt (its batch size is 1) from that row's noise."""
    rows = []
    for row, prompt in enumerate(edit_prompts()):
        with torch.no_grad():
            rows.append(pipe(
                image=source_image_list(prompt), prompt=str(prompt), negative_prompt=NEGATIVE if true_cfg > 1 else None,
                true_cfg_scale=true_cfg, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                latents=noise[row : row + 1], max_sequence_length=MAX_SEQUENCE_LENGTH, output_type="latent",
            ).images.float())
    return torch.cat(rows)


@pytest.mark.parametrize("true_cfg", [1.0, TRUE_CFG])
def test_ode_plan_reproduces_the_pipeline_with_one_and_two_source_images(true_cfg: float) -> None:
    backbone = load_backbone(_config())
    assert isinstance(backbone, DiffusersBackbone) and backbone.family == "qwenimage_edit" and backbone._several_images()
    noise, engine = _engine(backbone, seed=7, guidance=true_cfg)
    pipe = load_pipeline_like_a_user(tiny_edit_pipeline(PLUS))
    assert torch.equal(noise[:1], pipe.prepare_latents(None, 1, 4, HEIGHT, WIDTH, torch.float32, "cpu",
                                                       torch.Generator().manual_seed(7))[0])  # the pipeline's own draw
    difference = (engine - _pipeline(pipe, noise, true_cfg)).abs().max().item()
    print(f"qwenimage_edit (Plus) true_cfg={true_cfg}: max |engine - pipeline| latents = {difference:.3g}")
    assert engine.shape == (2, (HEIGHT // 8) * (WIDTH // 8), 16) and difference < 1e-5
    assert backbone.decode(engine).shape == (2, 3, HEIGHT, WIDTH)


def test_every_source_image_counts_and_rows_group_by_image_count() -> None:
    backbone = load_backbone(_config())
    conditioning = backbone.encode_prompts(edit_prompts())
    tokens = (HEIGHT // 8) * (WIDTH // 8)
    assert conditioning.source_latents is not None and conditioning.source_latents.shape == (2, 2 * tokens, 17)
    assert conditioning.source_latents[:, :, -1].sum(dim=1).tolist() == [tokens, 2 * tokens]  # one image, two images
    other = backbone.encode_prompts([EditPrompt("put the cat on the sofa", [_image(2), _image(4, 16, 32)])])
    assert (other.prompt_embeds - conditioning.select([1]).prompt_embeds).abs().max().item() > 1e-4  # the second image
    schedule = backbone.schedule(STEPS)
    noise = backbone.initial_noise(2, torch.Generator().manual_seed(0))
    step, rows = torch.zeros(2, dtype=torch.long), torch.arange(2)
    with torch.no_grad():
        together = backbone.model_fn(conditioning, TRUE_CFG, schedule)(noise, step, rows)
        alone = [backbone.model_fn(conditioning.select([row]), TRUE_CFG, schedule)(noise[row : row + 1], step[:1], step[:1])
                 for row in range(2)]
    assert (together - torch.cat(alone)).abs().max().item() < 1e-5


def test_tree_iteration_rescores_to_ratio_one_and_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(test_models_tree, "PROMPTS", edit_prompts())
    backbone = load_backbone(_config())
    last = f"transformer_blocks.{len(backbone.denoiser.transformer_blocks) - 1}.attn.to_add_out"
    without_gradient = (f"{last}.lora_A.default.weight", f"{last}.lora_B.default.weight")  # as for Qwen-Image-Edit
    test_models_tree.check_tree_iteration(backbone, TRUE_CFG, noise_level=1.0, without_gradient=without_gradient)


def test_lora_round_trip_through_load_lora_weights(tmp_path: Path) -> None:
    backbone = load_backbone(_config())
    _, base = _engine(backbone, seed=5)
    train_toward_zero(backbone, edit_prompts(), 1.0, STEPS, label="qwenimage_edit (Plus)")
    noise, trained = _engine(backbone, seed=5)
    assert (trained - base).abs().max().item() > 1e-3, "training did not move the policy"
    assert torch.equal(_engine(backbone, seed=5, denoiser=backbone.reference_denoiser())[1], base)

    backbone.save_trained(tmp_path / "lora")
    pipe = load_pipeline_like_a_user(tiny_edit_pipeline(PLUS))
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = _pipeline(pipe, noise)
    pipe.disable_lora()
    difference = (with_lora - trained).abs().max().item()
    print(f"qwenimage_edit (Plus): max |diffusers + saved LoRA - trained policy| = {difference:.3g}")
    assert difference < 1e-5 and (_pipeline(pipe, noise) - base).abs().max().item() < 1e-5


def test_trainer_iteration_full_finetune_on_jsonl_records_with_images_lists(tmp_path: Path) -> None:
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    for seed in range(4):
        _image(10 + seed, height=16, width=32).save(tmp_path / f"{seed}.png")
    records = [{"prompt": "edit 0", "images": ["0.png"]}, {"prompt": "edit 1", "images": ["1.png", "2.png"]},
               {"prompt": "edit 2", "image": "3.png"}]
    values = {
        "model": {"path": str(tiny_edit_pipeline(PLUS)), "dtype": "fp32", "device": "cpu", "height": HEIGHT,
                  "width": WIDTH, "max_sequence_length": MAX_SEQUENCE_LENGTH, "negative_prompt": NEGATIVE,
                  "full_finetune": True},
        "data": {"prompts": str(_write_jsonl(tmp_path, records)), "prompts_per_iteration": 2, "heldout": 1,
                 "num_eval_prompts": 1},
        "tree": {"k": 2, "window": 2},
        "sampling": {"steps": 3, "guidance_scale": TRUE_CFG},
        "reward": "tests.test_models_editing:SourceBrightness",
        "train": {"iterations": 1, "lr": 1e-4, "checkpoint_every": 0, "eval_every": 0, "eval_at_start": False,
                  "progress": False},
    }
    SourceBrightness.seen = []
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}"]))  # type: ignore[arg-type]
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and record["optimizer_steps"] >= 1, record
    assert SourceBrightness.seen and all(size == (32, 16) for _, size in SourceBrightness.seen)  # each prompt's first image


def test_bad_images_lists_and_several_images_for_a_one_image_pipeline_are_one_line_errors(tmp_path: Path) -> None:
    _image(1, 16, 32).save(tmp_path / "a.png")
    for images, message in [("a.png", "not a non-empty list of image paths"), ([], "not a non-empty list"),
                            (["a.png", 3], "not a non-empty list"), (["a.png", "missing.png"], "does not exist")]:
        file = _write_jsonl(tmp_path, [{"prompt": "edit", "images": images}])
        with pytest.raises(DataError, match=message) as error:
            load_jsonl(file)
        assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="has both 'image' and 'images'"):
        load_jsonl(_write_jsonl(tmp_path, [{"prompt": "edit", "image": "a.png", "images": ["a.png"]}]))
    (prompt,) = load_jsonl(_write_jsonl(tmp_path, [{"prompt": "edit", "images": ["a.png", "a.png"]}]))
    assert isinstance(prompt, EditPrompt) and len(source_image_list(prompt) or []) == 2

    one_image = load_backbone(_config(path=str(tiny_edit_pipeline("qwenimage_edit"))))
    with pytest.raises(ConfigError, match="takes one source image per prompt but a prompt has 2") as refused:
        one_image.encode_prompts([prompt])
    assert "\n" not in str(refused.value) and "QwenImageEditPlusPipeline" in str(refused.value)
    with pytest.raises(ConfigError, match="every prompt needs a source image"):
        load_backbone(_config()).encode_prompts(["make it red"])


def test_the_example_config_loads() -> None:
    from treegrpo.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "qwenimage_edit_plus_pickscore.yaml")
    assert config.model.path == "Qwen/Qwen-Image-Edit-2509" and config.tree.k ** config.tree.window == 16
