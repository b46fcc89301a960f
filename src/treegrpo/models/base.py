"""The small interface every model family implements, so one engine and one trainer drive them all.

The engine only ever sees a :data:`ModelFn` (latents, per-element step index, per-element
conditioning index -> model output) and a :class:`~treegrpo.math.sampling.Stepper`. A
:class:`Backbone` produces both from a diffusers model (or the 2-D toy), and decodes latents.
Every call takes what it needs as arguments; no call records state that a later one reads::

    schedule = backbone.schedule(num_steps)                 # timesteps + sampler tables
    stepper = schedule.stepper(noise_level, sde_type)
    model_fn = backbone.model_fn(conditioning, guidance_scale, schedule)           # trained policy
    ref_fn = backbone.model_fn(conditioning, guidance_scale, schedule,
                               denoiser=backbone.reference_denoiser())             # KL reference
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import torch

from treegrpo.math.sampling import Schedule

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
    """The registry name of the model family ("sd3", "flux", "sd", ... or "toy")."""

    denoiser: torch.nn.Module
    """The module being trained (transformer, UNet or toy MLP); LoRA adapters live inside it."""

    def encode_prompts(self, prompts: Sequence[Any]) -> Any:
        """Embed prompts once (text encoders frozen, no grad); rows follow ``prompts``."""
        ...

    def schedule(self, num_steps: int) -> Schedule:
        """The model's own schedule for ``num_steps`` denoising steps (as its pipeline sets it)."""
        ...

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``num`` initial latents x_T, drawn exactly as the model's pipeline draws them."""
        ...

    def model_fn(
        self, conditioning: Any, guidance_scale: float, schedule: Schedule, *, denoiser: Optional[Callable[..., Any]] = None
    ) -> ModelFn:
        """Bind conditioning, guidance and schedule into the engine's model function.

        ``denoiser`` is the module called (default: the trained ``self.denoiser``); pass a DDP
        wrapper of it to train, or :meth:`reference_denoiser` for the frozen reference policy.
        """
        ...

    def reference_denoiser(self) -> Callable[..., Any]:
        """The frozen reference policy's denoiser (LoRA off, or the frozen copy), for a KL term."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> images ``[B, 3, H, W]`` in [0, 1] (float32, no grad).

        Video families (Wan) return clips ``[B, F, 3, H, W]`` (frame axis before channels, as
        diffusers' video pipelines output them); rewards see them through ``rewards.video``.
        """
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The weights the optimizer updates."""
        ...

    def save_trained(self, folder: Path, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Write what was trained: LoRA in diffusers format, or full weights (safetensors).

        ``weights``: the trained weights gathered whole, when the denoiser holds FSDP shards.
        """
        ...
