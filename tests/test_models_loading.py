"""Loading: family detection, one-line errors, config validation and OmegaConf compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline, torch_threads
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.base import Backbone
from treegrpo.models.loading import family_of, read_model_index
from treegrpo.models.registry import FAMILIES


def test_folder_that_is_not_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a diffusers pipeline folder") as error:
        load_backbone(ModelConfig(path=str(tmp_path), device="cpu"))
    assert "\n" not in str(error.value) and "save_pretrained" in str(error.value)


def test_unsupported_pipeline_class(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match="KandinskyV22Pipeline, which is not supported") as error:
        load_backbone(ModelConfig(path=str(tmp_path), device="cpu"))
    message = str(error.value)
    assert "\n" not in message
    assert all(pipeline in message for family in FAMILIES.values() for pipeline in family.pipelines)


def test_missing_hub_model_offline() -> None:
    config = ModelConfig(path="nobody/no-such-pipeline-xyz", local_files_only=True, device="cpu")
    with pytest.raises(ValueError, match="cannot read model_index.json"):
        load_backbone(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"path": ""}, "model.path is empty"),
        ({"dtype": "fp8"}, "model.dtype 'fp8'"),
        ({"family": "sdxl"}, "model.family 'sdxl'"),
        ({"lora": LoraConfig(init_weights="pissa")}, "model.lora.init_weights"),
        ({"lora": LoraConfig(rank=0)}, "model.lora.rank"),
        ({"height": 0}, "model.height"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    config = ModelConfig(**{"path": "somewhere", **overrides})
    with pytest.raises(ValueError, match=message):
        load_backbone(config)


@pytest.mark.parametrize("family", ["sd3", "flux", "sd"])
def test_family_is_read_from_model_index(family: str) -> None:
    config = ModelConfig(path=str(tiny_pipeline(family)))
    assert family_of(read_model_index(config), config.path) == family


def test_backbone_protocol_and_bf16_lora() -> None:
    """bf16 weights, fp32 LoRA weights, float32 model output; text encoders and VAE frozen."""
    with torch_threads(1):
        backbone = load_backbone(
            ModelConfig(
                path=str(tiny_pipeline("sd3")),
                dtype="bf16",
                device="cpu",
                height=16,
                width=16,
                max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
                lora=LoraConfig(rank=2, alpha=2.0, target_modules=["attn.to_q", "attn.to_v"]),
            )
        )
        assert isinstance(backbone, Backbone)
        assert backbone.pipe.transformer.dtype == torch.bfloat16
        names = [n for n, p in backbone.denoiser.named_parameters() if p.requires_grad]
        assert names and all(("to_q.lora" in n or "to_v.lora" in n) for n in names)
        assert all(p.dtype == torch.float32 for p in backbone.trainable_parameters())
        frozen = [backbone.pipe.vae, backbone.pipe.text_encoder, backbone.pipe.text_encoder_2]
        assert not any(p.requires_grad for module in frozen for p in module.parameters())
        conditioning = backbone.encode_prompts(["a", "b", "c"])
        assert len(conditioning) == 3 and len(conditioning.select([2, 0])) == 2
        schedule = backbone.schedule(3)
        latents = backbone.initial_noise(2, torch.Generator().manual_seed(0))
        output = backbone.model_fn(conditioning, 4.5, schedule)(latents, torch.tensor([0, 2]), torch.tensor([2, 1]))
        assert output.dtype == torch.float32 and output.shape == latents.shape
        assert torch.isfinite(output).all()


def test_model_fn_uses_the_schedule_it_is_given_and_nothing_else() -> None:
    backbone = load_backbone(
        ModelConfig(path=str(tiny_pipeline("flux")), dtype="fp32", device="cpu", height=16, width=16,
                    max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)
    )
    conditioning = backbone.encode_prompts(["a"])
    latents = backbone.initial_noise(1, torch.Generator().manual_seed(0))
    step, row = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    short = backbone.model_fn(conditioning, 3.5, backbone.schedule(3))
    before = short(latents, step, row)
    long = backbone.model_fn(conditioning, 3.5, backbone.schedule(12))  # a later schedule changes nothing in `short`
    assert torch.equal(short(latents, step, row), before)
    assert not torch.allclose(long(latents, step, row), before)  # step 1 of 12 is another timestep than step 1 of 3


def test_model_config_is_an_omegaconf_structured_config() -> None:
    schema = OmegaConf.structured(ModelConfig)
    merged = OmegaConf.merge(schema, {"path": "stabilityai/stable-diffusion-3.5-medium", "lora": {"rank": 8}})
    config = OmegaConf.to_object(merged)
    assert isinstance(config, ModelConfig) and isinstance(config.lora, LoraConfig)
    assert config.lora.rank == 8 and config.lora.alpha == 64.0 and config.lora.target_modules is None
    assert OmegaConf.merge(schema, {"lora": {"target_modules": ["to_q"]}}).lora.target_modules == ["to_q"]
    with pytest.raises(Exception):
        OmegaConf.merge(schema, {"lora": {"rank": "eight"}})


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("config_file", sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("recipes/*.yaml")]))
def test_shipped_configs_model_sections_fit_the_schema(config_file: Path) -> None:
    """Every shipped config (recipes/ included) resolves whole: keys, values and the checks that refuse contradictions."""
    from treegrpo.config import load_config

    section = OmegaConf.load(config_file).get("model")
    assert section is not None, f"{config_file.name} has no model section"
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), section))
    assert isinstance(config, ModelConfig) and config.path
    assert load_config(config_file).model.path == config.path


def test_family_override_must_not_contradict_the_pipeline() -> None:
    config = ModelConfig(path=str(tiny_pipeline("sd3")), family="flux", device="cpu")
    with pytest.raises(ValueError, match="model.family is 'flux' but .* StableDiffusion3Pipeline"):
        load_backbone(config)


def test_a_mistyped_local_model_path_is_not_sent_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing absolute or relative folder used to be tried as a hub id (retry lines for ~30 s, then an
    HFValidationError hint about downloading); now one line says the folder does not exist."""
    from treegrpo.models.loading import read_model_index

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub was asked")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in (str(tmp_path / "missing_sd3"), "models/sd3_typo", "./sd3", "~/no/such/model"):
        with pytest.raises(ConfigError) as error:
            read_model_index(ModelConfig(path=path))
        assert "is not a folder" in str(error.value) and "does not exist" in str(error.value), path
    with pytest.raises(ConfigError, match="cannot read model_index.json"):  # a hub id still goes to the hub
        read_model_index(ModelConfig(path="someone/some-model", local_files_only=True))
