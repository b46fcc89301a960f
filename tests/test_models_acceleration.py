"""The denoiser's memory and speed options: float8 weight storage, regional compilation, fused AdamW."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline, torch_threads
from treegrpo.errors import ConfigError
from treegrpo.models import LoraConfig, ModelConfig, load_backbone
from treegrpo.models.acceleration import compile_blocks, repeated_blocks
from treegrpo.models.config import check_model_config
from treegrpo.trainer.setup import fused_adamw

GUIDANCE = {"sd3": 4.5, "flux": 3.5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _config(family: str, **overrides: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "path": str(tiny_pipeline(family)), "dtype": "fp32", "device": "cpu", "height": 16, "width": 24,
        "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH, "lora": LoraConfig(rank=4, alpha=8.0),
    }
    return ModelConfig(**{**settings, **overrides})


def _output_and_lora_grads(backbone: Any, family: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One guided model call on two latents at different steps, and the gradient of a loss on it."""
    conditioning = backbone.encode_prompts(["a red cube", "two  cats, odd text!"])
    schedule = backbone.schedule(4)
    model_fn = backbone.model_fn(conditioning, GUIDANCE[family], schedule)
    latents = backbone.initial_noise(2, torch.Generator().manual_seed(3))
    output = model_fn(latents, torch.tensor([0, 2]), torch.tensor([0, 1]))
    output.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    return output.detach(), grads


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_float8_storage_computes_exactly_the_float8_rounded_model(family: str) -> None:
    """Layerwise casting must equal a plain model whose stored weights were rounded to float8, in output and LoRA
    gradients (compute in fp32, so any difference is a bug), with gradient checkpointing on (recompute re-casts)."""
    stored = load_backbone(_config(family, storage_dtype="fp8_e4m3", gradient_checkpointing=True))
    plain = load_backbone(_config(family, gradient_checkpointing=True))
    dtypes = {n: p.dtype for n, p in stored.denoiser.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n)  # fp32 master weights, not float8
    cast = [n for n, d in dtypes.items() if d == torch.float8_e4m3fn]
    assert cast and not any("norm" in n for n in cast)  # layer weights stored in float8, norms left alone
    assert not any(d == torch.float8_e4m3fn for d in {p.dtype for p in stored.pipe.vae.parameters()})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        plain_params = dict(plain.denoiser.named_parameters())
        for name, parameter in stored.denoiser.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter matter
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            plain_params[name].copy_(parameter.to(torch.float32))
    stored_out, stored_grads = _output_and_lora_grads(stored, family)
    plain_out, plain_grads = _output_and_lora_grads(plain, family)
    assert torch.equal(stored_out, plain_out)
    assert stored_grads.keys() == plain_grads.keys() and stored_grads
    for name in stored_grads:
        torch.testing.assert_close(stored_grads[name], plain_grads[name], rtol=0, atol=0)
    # and the rounding is real: without it the outputs differ
    with torch.no_grad():
        for name, parameter in plain.denoiser.named_parameters():
            if name in cast:
                parameter.add_(parameter.abs().max() * 0.01)
    assert not torch.equal(_output_and_lora_grads(plain, family)[0], stored_out)


def test_float8_storage_with_bf16_adapters() -> None:
    """With model.trainable_fp32=false the adapters come back to model.dtype from the float8 peft moved them to."""
    backbone = load_backbone(_config("sd3", dtype="bf16", trainable_fp32=False, storage_dtype="fp8_e5m2"))
    assert {p.dtype for p in backbone.trainable_parameters()} == {torch.bfloat16}
    output, grads = _output_and_lora_grads(backbone, "sd3")
    assert torch.isfinite(output).all() and all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"storage_dtype": "fp8"}, "model.storage_dtype 'fp8' is not supported; use one of fp8_e4m3, fp8_e5m2"),
        ({"storage_dtype": "fp8_e4m3", "full_finetune": True}, "train a LoRA (model.full_finetune=false)"),
    ],
)
def test_storage_dtype_refusals(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_model_config(ModelConfig(path="x", **overrides))
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("family", "blocks"), [("sd3", "transformer_blocks"), ("flux", "single_transformer_blocks")])
def test_compile_wraps_each_repeated_block(family: str, blocks: str) -> None:
    backbone = load_backbone(_config(family))
    denoiser = backbone.denoiser
    expected = len(denoiser.transformer_blocks) + len(getattr(denoiser, "single_transformer_blocks", []))
    assert len(getattr(denoiser, blocks)) >= 1
    found = repeated_blocks(denoiser)
    assert len(found) == expected and all(b not in found for b in (denoiser, denoiser.pos_embed))
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in found)
    compiled = load_backbone(_config(family, compile=True))
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in repeated_blocks(compiled.denoiser))
    assert compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0  # nothing named *blocks: nothing compiled


def test_fused_adamw_only_for_unsharded_cuda_weights() -> None:
    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert fused_adamw([cuda, cuda], fsdp=False)  # type: ignore[list-item]
    assert not fused_adamw([cuda, cpu], fsdp=False)  # type: ignore[list-item]
    assert not fused_adamw([cuda], fsdp=True)  # type: ignore[list-item]
