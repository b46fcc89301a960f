"""FLUX.2 [dev] (``Flux2Pipeline``: Mistral-3 text encoder, guidance embedding) through the ``flux2`` adapter.

A tiny random pipeline (:mod:`treegrpo.testing.tiny_flux2_dev`), fp32, a non-square 16 x 24 image.
The engine's ODE plan reproduces the pipeline's final latents and images at two guidance values
(the scale goes into the guidance embedding: one row per forward, no true CFG); a tree iteration
re-scores to ratio 1 before any update; a trained LoRA loads through
``Flux2Pipeline.load_lora_weights``; full fine-tuning moves the weights but not the reference copy;
one trainer iteration runs. The LoRA, full fine-tuning and tree checks are those of
``tests/test_models_families.py`` with this pipeline added to its table. Run with ``-s`` to see
the measured differences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests import test_models_families as families
from tests.test_models_tree import check_tree_iteration
from treegrpo.engine.rollout import rollout_trees
from treegrpo.errors import ConfigError
from treegrpo.math.plans import ODE
from treegrpo.models import load_backbone
from treegrpo.models.flux2 import Flux2Backbone
from treegrpo.testing.tiny_models import load_pipeline_like_a_user, tiny_pipeline, torch_threads

DEV = families.Family("flux2_dev", 16, 24, 256, "", 4.0, 1.0, 0.7)
"""256 text tokens keep the prompts after the system message (character-level tokenizer, about 180 tokens)."""
GUIDANCES = (2.5, 4.0)
"""Two values of the guidance embedding (FLUX.2 [dev]'s published default is 4.0)."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture
def with_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tests/test_models_families.py``'s table with FLUX.2 [dev] in it (its pipeline folder is ``tiny_pipeline("flux2_dev")``)."""
    monkeypatch.setitem(families.FAMILIES, DEV.name, DEV)


def _forward_rows(backbone: Flux2Backbone) -> list[int]:
    """Rows of every transformer call from now on (a forward hook)."""
    rows: list[int] = []
    backbone.denoiser.register_forward_hook(lambda module, args, kwargs, output: rows.append(kwargs["hidden_states"].shape[0]),
                                            with_kwargs=True)
    return rows


def test_ode_plan_reproduces_the_pipeline_at_two_guidance_values() -> None:
    backbone = load_backbone(families._config(DEV))
    assert isinstance(backbone, Flux2Backbone) and backbone.family == "flux2" and backbone._embeds_guidance()
    conditioning = backbone.encode_prompts(families.PROMPTS)
    assert conditioning.prompt_embeds.shape == (len(families.PROMPTS), DEV.max_sequence_length, 3 * 8)
    schedule = backbone.schedule(families.PARITY_STEPS)
    noise = backbone.initial_noise(len(families.PROMPTS), torch.Generator().manual_seed(7))
    rows = _forward_rows(backbone)
    pipe = load_pipeline_like_a_user(tiny_pipeline(DEV.name))
    finals = []
    for guidance in GUIDANCES:
        with torch.no_grad():
            rollout = rollout_trees(
                backbone.model_fn(conditioning, guidance, schedule), schedule.stepper(0.0), (ODE,) * families.PARITY_STEPS,
                noise, torch.arange(len(families.PROMPTS)),
            )
        latents, images = families._pipeline_call(DEV, pipe, guidance, families.PARITY_STEPS, 7)
        difference = (rollout.leaf_latents - latents).abs().max().item()
        print(f"flux2 [dev] guidance={guidance}: max |engine - pipeline| latents = {difference:.3g}")
        assert difference < 1e-5
        decoded = backbone.decode(rollout.leaf_latents)
        assert decoded.shape == images.shape == (len(families.PROMPTS), 3, DEV.height, DEV.width)
        assert (decoded - images).abs().max().item() < 1e-4
        finals.append(rollout.leaf_latents)
    assert (finals[0] - finals[1]).abs().max().item() > 1e-4, "the guidance embedding did not change the result"
    assert rows and set(rows) == {len(families.PROMPTS)}, "guidance-distilled: one row per image, no unconditional rows"


def test_tree_iteration_rescores_to_ratio_one_and_updates() -> None:
    torch.manual_seed(0)
    check_tree_iteration(load_backbone(families._config(DEV)), DEV.guidance, DEV.noise_level)


def test_lora_round_trip_through_flux2_pipeline_load_lora_weights(with_dev: None, tmp_path: Path) -> None:
    families.test_lora_round_trip_through_load_lora_weights(DEV.name, tmp_path)


def test_full_finetune_moves_weights_but_not_the_reference(with_dev: None, tmp_path: Path) -> None:
    families.test_full_finetune_moves_weights_but_not_the_reference(DEV.name, tmp_path)


def test_true_cfg_and_an_image_off_the_grid_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="has no true CFG") as error:
        load_backbone(families._config(DEV, true_cfg_scale=3.0))
    assert "\n" not in str(error.value) and "leave model.true_cfg_scale at 1" in str(error.value)
    with pytest.raises(ConfigError, match="model.height"):
        load_backbone(families._config(DEV, height=DEV.height + 1))


def test_one_trainer_iteration(tmp_path: Path) -> None:
    from tests.test_trainer import tiny_values
    from treegrpo.config import resolve_config
    from treegrpo.trainer import train

    values = tiny_values(tmp_path, iterations=1, checkpoint_every=0, eval_every=0, eval_at_start=False, ema=0.0)
    values["model"] = {"path": str(tiny_pipeline(DEV.name)), "dtype": "fp32", "device": "cpu", "height": DEV.height,
                       "width": DEV.width, "max_sequence_length": DEV.max_sequence_length, "lora": {"rank": 4, "alpha": 4}}
    values["sampling"] = {"steps": 3, "guidance_scale": DEV.guidance, "noise_level": DEV.noise_level}
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}"]))  # type: ignore[arg-type]
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and record["optimizer_steps"] >= 1 and (folder / "final").exists()


def test_gpu_iteration_runs_the_tiny_flux2_dev_architecture(tmp_path: Path) -> None:
    """``benchmarks/gpu_iteration.py --size flux2_dev`` (the published 32B architecture) has a tiny twin on the same code path."""
    from benchmarks import gpu_iteration

    assert gpu_iteration.SIZES["flux2_dev"].transformer["joint_attention_dim"] == 3 * 5120
    payload = gpu_iteration.main(["--size", "flux2_dev_tiny", "--device", "cpu", "--dtype", "fp32", "--prompts", "1",
                                  "--warmup", "0", "--iterations", "1", "--flop-repeats", "1", "--methods", "treegrpo",
                                  "--out", str(tmp_path)])
    (result,) = payload["results"]
    assert result["rollout_nfe"] == result["rollout_nfe_closed_form"] and result["extra"]["minibatch_flops"] > 0


def test_the_example_config_loads() -> None:
    from treegrpo.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "flux2_dev_pickscore.yaml")
    assert config.model.path == "black-forest-labs/FLUX.2-dev" and config.sampling.guidance_scale == 4.0
    assert config.model.true_cfg_scale == 1.0 and config.tree.k ** config.tree.window == 16
