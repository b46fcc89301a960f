"""The small interface every model family implements, so one engine and one trainer drive them all.

The engine only ever sees a :data:`ModelFn` (latents, per-element step index, per-element
conditioning index -> model output) and a :class:`~treegrpo.sampling.Stepper`. A
:class:`Backbone` produces both from a diffusers model (or the 2-D toy), and decodes latents.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, Sequence, runtime_checkable

import torch

from treegrpo.sampling import Stepper

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(latents [N, ...], step_index [N], cond_index [N]) -> model output [N, ...]``.

``cond_index`` selects rows of the conditioning the function was built for (one row per prompt),
so nodes of many trees and prompts share one call. Classifier-free guidance, if any, happens
inside: the function returns the guided output.
"""


@runtime_checkable
class Backbone(Protocol):
    """A trainable generator seen through the engine's eyes."""

    family: str
    """"sd3", "flux", "sd" or "toy"."""

    denoiser: torch.nn.Module
    """The module being trained (transformer, UNet or toy MLP); LoRA adapters live inside it."""

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Embed prompts once (text encoders frozen, no grad); rows follow ``prompts``."""
        ...

    def stepper(self, num_steps: int, noise_level: float) -> Stepper:
        """The model's own schedule for ``num_steps`` with SDE strength ``noise_level`` (eta for DDIM)."""
        ...

    def initial_noise(self, num: int, generator: torch.Generator | None) -> torch.Tensor:
        """``num`` initial latents x_T, drawn exactly as the model's pipeline draws them."""
        ...

    def model_fn(self, conditioning: Any, guidance_scale: float) -> ModelFn:
        """Bind conditioning and CFG scale into the engine's model function."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> images ``[B, 3, H, W]`` in [0, 1] (float32, no grad)."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        ...

    def reference(self) -> ContextManager[None]:
        """Context in which ``model_fn`` computes the frozen reference policy (for a KL term)."""
        ...

    def save_trained(self, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write what was trained: LoRA in diffusers format, or full weights (safetensors).

        ``weights``: the trained weights gathered whole, when the denoiser holds FSDP shards.
        """
        ...


def no_reference() -> ContextManager[None]:
    """For backbones without a reference policy (KL off)."""
    return contextlib.nullcontext()
