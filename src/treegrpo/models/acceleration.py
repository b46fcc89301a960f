"""The denoiser's memory and speed options: frozen weights stored in float8, regional compilation.

Both use what diffusers and torch already provide: ``ModelMixin.enable_layerwise_casting`` keeps
each frozen layer's weights in float8 and casts them to the compute dtype for its forward (half
the memory of bf16 weights; FLUX.1-dev's 12B transformer then fits a 24 GB GPU), and
``torch.compile`` of each repeated block (regional compilation: the blocks share one compiled
graph, so compiling takes seconds, not minutes).
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
"""``model.storage_dtype`` names of the float8 formats frozen weights can be stored in."""


@runtime_checkable
class LayerwiseCasting(Protocol):
    """A diffusers model: ``ModelMixin`` has ``enable_layerwise_casting``."""

    def enable_layerwise_casting(
        self, storage_dtype: torch.dtype = ..., compute_dtype: Optional[torch.dtype] = None
    ) -> None: ...


def diffusers_models(module: torch.nn.Module) -> list[LayerwiseCasting]:
    """The diffusers models inside ``module``: itself, or the experts a wrapper holds (Wan 2.2)."""
    if isinstance(module, LayerwiseCasting):
        return [module]
    return [child for child in module.children() if isinstance(child, LayerwiseCasting)]


def store_frozen_weights(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Store ``module``'s layer weights in ``storage``, cast to ``compute`` for each layer's forward.

    Call before adding LoRA adapters: the casting then hooks only the layers that become the
    adapters' base layers, and peft keeps casting each adapter's input to the adapter's dtype
    (float32 master weights stay float32). peft moves new adapters to the float8 of the layer
    they wrap after initialising them, so the caller casts them back (a Gaussian A is then
    rounded to float8 once; B starts at zero). Norms and embeddings keep their dtype (each
    model's ``_skip_layerwise_casting_patterns``). Returns the number of models cast.
    """
    models = diffusers_models(module)
    for model in models:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    return len(models)


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of every ``ModuleList`` whose name ends in ``blocks`` (the transformer's repeated layers)."""
    blocks: list[torch.nn.Module] = []
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and name.split(".")[-1].endswith("blocks"):
            blocks.extend(child)
    return blocks


def compile_blocks(module: torch.nn.Module, mode: Optional[str] = None) -> int:
    """``torch.compile`` each repeated block of ``module`` in place (regional compilation); returns how many."""
    blocks = repeated_blocks(module)
    for block in blocks:
        block.compile(mode=mode)
    return len(blocks)
