"""What the diffusers adapters (SD3, FLUX, SD, Qwen-Image, FLUX.2, Z-Image, Sana, Wan) share: freezing, LoRA / full fine-tuning, CFG, export.

:class:`DiffusersBackbone` wraps a loaded diffusers pipeline. Family subclasses supply the
prompt encoder, the schedule, the initial noise, the denoiser call and the latent -> VAE mapping;
this class turns them into the :class:`~treegrpo.models.base.Backbone` interface.

Precision: frozen parts (text encoders, VAE, the base weights under LoRA) are in ``model.dtype``.
Trained weights are float32 when ``model.trainable_fp32`` (the default): LoRA weights, or with
``full_finetune`` the whole denoiser, which then computes in float32 unless the trainer runs it
under autocast (accelerate's ``mixed_precision``). ``model_fn`` casts its inputs to the dtype of
the denoiser's weights and always returns float32.

Memory: with ``full_finetune`` and ``with_reference=True`` a frozen deep copy of the denoiser is
kept as the reference policy (one more denoiser in ``model.dtype``: about 5 GB for SD3.5-medium,
24 GB for FLUX.1 in bf16). LoRA needs no copy: the reference is the model with adapters disabled.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, cast

import torch

from treegrpo.errors import ConfigError
from treegrpo.math.sampling import FlowSchedule, Schedule, SdeType
from treegrpo.models.acceleration import STORAGE_DTYPES, compile_blocks, store_frozen_weights
from treegrpo.models.base import ModelFn
from treegrpo.models.config import ModelConfig, torch_dtype

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
TEXT_ENCODER_NAMES: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class TextConditioning:
    """Prompt embeddings (one row per prompt) and the unconditional embedding (one row).

    ``pooled_*`` are the pooled CLIP embeddings of SD3 and FLUX (``None`` for the others).
    ``*_mask`` (``[N, L]`` bool, True = real token) mark zero padding of variable-length text
    (Qwen-Image, Z-Image); ``None`` means every position is a token.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: Optional[torch.Tensor] = None
    negative_pooled_prompt_embeds: Optional[torch.Tensor] = None
    prompt_mask: Optional[torch.Tensor] = None
    negative_prompt_mask: Optional[torch.Tensor] = None
    source_latents: Optional[torch.Tensor] = None
    """Editing families: each prompt's encoded source image ``[N, L_src, C]`` (packed like the latents)."""
    source_ids: Optional[torch.Tensor] = None
    """Editing families: the position ids of the source tokens (shared by every row)."""
    negative_per_prompt: bool = False
    """``negative_prompt_embeds`` (and its mask) hold one row per prompt instead of one shared row:
    Qwen-Image-Edit encodes the negative prompt together with each prompt's source image."""
    source_embeds: Optional[torch.Tensor] = None
    """Wan 2.1 image-to-video: each prompt's CLIP image embedding ``[N, L_img, D]`` (the same for both CFG rows)."""

    def __len__(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def to(self, device: torch.device | str) -> "TextConditioning":
        """A copy with every tensor on ``device``."""
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self)}
        return TextConditioning(**moved)

    def select(self, rows: torch.Tensor | Sequence[int]) -> "TextConditioning":
        """The conditioning of the prompts at ``rows`` (the unconditional row is kept)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_embeds.device)
        pooled = None if self.pooled_prompt_embeds is None else self.pooled_prompt_embeds[index]
        mask = None if self.prompt_mask is None else self.prompt_mask[index]
        source = None if self.source_latents is None else self.source_latents[index]
        negative, negative_mask = self.negative_prompt_embeds, self.negative_prompt_mask
        if self.negative_per_prompt:
            negative = negative[index]
            negative_mask = None if negative_mask is None else negative_mask[index]
        return TextConditioning(
            self.prompt_embeds[index], negative, pooled, self.negative_pooled_prompt_embeds,
            mask, negative_mask, source, self.source_ids, self.negative_per_prompt,
            source_embeds=None if self.source_embeds is None else self.source_embeds[index],
        )


def _to(value: Any, device: torch.device | str) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def concat_padded(
    parts: Sequence[tuple[torch.Tensor, Optional[torch.Tensor]]],
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Stack ``[N_i, L_i, D]`` text embeddings (with optional ``[N_i, L_i]`` masks) along the batch.

    Shorter sequences are zero-padded at the end and masked there, so rows of different lengths
    share one forward. Without masks and with equal lengths this is ``torch.cat`` (mask ``None``).
    """
    length = max(int(embeds.shape[1]) for embeds, _ in parts)
    if all(mask is None and embeds.shape[1] == length for embeds, mask in parts):
        return torch.cat([embeds for embeds, _ in parts]), None
    padded, masks = [], []
    for embeds, mask in parts:
        n, own = int(embeds.shape[0]), int(embeds.shape[1])
        if mask is None:
            mask = torch.ones(n, own, dtype=torch.bool, device=embeds.device)
        padded.append(torch.cat([embeds, embeds.new_zeros(n, length - own, *embeds.shape[2:])], dim=1))
        masks.append(torch.cat([mask.bool(), mask.new_zeros(n, length - own, dtype=torch.bool)], dim=1))
    return torch.cat(padded), torch.cat(masks)


def checked_image_size(size: tuple[int, int], multiple: int, family: str) -> tuple[int, int]:
    """``size`` unchanged if both sides are multiples of ``multiple`` (the pipeline's latent grid), else a ConfigError."""
    height, width = size
    if height % multiple or width % multiple:
        raise ConfigError(
            f"model.height and model.width must be multiples of {multiple} for {family} (got {height} x {width}); "
            f"round them to a multiple of {multiple}"
        )
    return height, width



def checked_num_frames(frames: int, factor: int, family: str, examples: str) -> int:
    """``frames`` unchanged if it is 1 + a multiple of the VAE's temporal ``factor`` (a video pipeline's rule),
    else a ConfigError naming ``examples`` of valid counts."""
    if frames < 1 or (frames - 1) % factor:
        raise ConfigError(f"model.num_frames must be 1 + a multiple of {factor} for {family} (got {frames}), e.g. {examples}")
    return frames

@dataclass
class DenoiserInputs:
    """One batched denoiser call: latents, per-row timesteps and text conditioning (mask: see TextConditioning)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: Optional[torch.Tensor]
    prompt_mask: Optional[torch.Tensor] = None
    source_latents: Optional[torch.Tensor] = None
    """Editing families: the rows' encoded source images (see TextConditioning)."""
    source_ids: Optional[torch.Tensor] = None
    source_embeds: Optional[torch.Tensor] = None
    """Wan 2.1 image-to-video: the rows' CLIP image embeddings (see TextConditioning)."""


@dataclass(frozen=True)
class TrainingWindow:
    """The steps any iteration may train out of ``num_steps`` (for denoisers that depend on the step: Wan 2.2's experts)."""

    num_steps: int
    steps: tuple[int, ...]


def shift_mu(scheduler_config: Any, image_seq_len: int, max_shift_default: float) -> float:
    """The flow pipelines' dynamic shift ``mu``: linear in the image sequence length between the
    scheduler config's base and max shifts (diffusers' ``calculate_shift``, one copy per pipeline)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", max_shift_default),
    ))


def flow_sigma_schedule(pipeline_scheduler: Any, num_steps: int, device: torch.device | str, model: str) -> FlowSchedule:
    """Sigmas and timesteps of a copy of the pipeline's scheduler after ``set_timesteps(num_steps)``: the
    multistep schedulers (UniPC, DPM-solver) released with Wan and Sana give a flow grid when
    ``use_flow_sigmas`` is on; ``model`` names the pipeline in the error when it is off."""
    scheduler = pipeline_scheduler.__class__.from_config(pipeline_scheduler.config)
    if "use_flow_sigmas" in scheduler.config and not scheduler.config.use_flow_sigmas:
        raise ConfigError(f"the {model} pipeline's {type(scheduler).__name__} has use_flow_sigmas=false; "
                          "a flow-matching grid is needed")
    scheduler.set_timesteps(num_steps, device=device)
    return FlowSchedule(scheduler.sigmas.to(device, torch.float32), scheduler.timesteps.to(device))


class AdapterModel(Protocol):
    """The peft adapter methods the adapters call on a denoiser: a diffusers model's (``PeftAdapterMixin``,
    ``ModelMixin``), or Wan 2.2's :class:`~treegrpo.models.wan.TwoExperts`, which calls them on both experts."""

    def add_adapter(self, adapter_config: Any, adapter_name: str = ...) -> None: ...

    def disable_adapters(self) -> None: ...

    def enable_adapters(self) -> None: ...

    def enable_gradient_checkpointing(self) -> None: ...


class DiffusersModel(AdapterModel, Protocol):
    """A diffusers denoiser (``ModelMixin`` + ``ConfigMixin`` + ``PeftAdapterMixin``) as the adapters use it."""

    @property
    def config(self) -> Any:
        """The model's ``FrozenDict`` config, read by attribute (diffusers annotates it as a plain dict)."""
        ...

    peft_config: dict[str, Any]
    """The adapters' peft configs by name (set by ``add_adapter``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def save_pretrained(self, save_directory: str | Path, *, safe_serialization: bool = ...) -> None: ...

    def save_config(self, save_directory: str | Path) -> None: ...


def adapter_model(module: torch.nn.Module) -> AdapterModel:
    """A :class:`DiffusersBackbone`'s denoiser through its adapter methods, which ``nn.Module``'s typing cannot see
    (its ``__getattr__`` types every other attribute as ``Tensor | Module``)."""
    return cast(AdapterModel, module)


def diffusers_model(module: torch.nn.Module) -> DiffusersModel:
    """A diffusers denoiser (not Wan 2.2's ``TwoExperts``) through the members ``nn.Module``'s typing cannot see.

    The pipeline hands it over untyped; each family adapter knows which diffusers model it is.
    """
    return cast(DiffusersModel, module)


class WithoutAdapters(torch.nn.Module):
    """The LoRA denoiser's base model: each call runs with the adapters disabled (the reference policy)."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's output; the adapters (and their requires_grad) are restored after."""
        trainable = [p for p in self.denoiser.parameters() if p.requires_grad]
        adapters = adapter_model(self.denoiser)
        adapters.disable_adapters()
        try:
            return self.denoiser(*args, **kwargs)
        finally:
            adapters.enable_adapters()
            for parameter in trainable:
                parameter.requires_grad_(True)


def weights_dtype(denoiser: Any) -> torch.dtype:
    """The dtype a denoiser's inputs are cast to: that of its frozen (base) weights, else of any weight."""
    parameters = list(denoiser.parameters()) if isinstance(denoiser, torch.nn.Module) else []
    frozen = [p for p in parameters if not p.requires_grad]
    return (frozen or parameters)[0].dtype if parameters else torch.float32


class DiffusersBackbone:
    """Base of the diffusers adapters; see the module docstring. Subclasses set the class fields."""

    family: str = ""
    denoiser_name: str = ""
    """Pipeline attribute of the trained module: ``"transformer"`` or ``"unet"``."""
    default_lora_targets: tuple[str, ...] = ()
    sde_types: tuple[SdeType, ...] = (SdeType.sde, SdeType.cps)
    """``sampling.sde_type`` values the family's sampler has."""
    flow_matching: bool = True
    """A flow-matching model (sigmas, velocity); False for DDIM-sampled diffusion models."""
    pipeline_load_kwargs: dict[str, Any] = {}
    """Extra ``from_pretrained`` arguments of the family's pipeline (e.g. no safety checker)."""

    def __init__(
        self,
        pipe: Any,
        cfg: ModelConfig,
        device: torch.device,
        *,
        with_reference: bool = False,
        trainable: bool = True,
        training_window: Optional[TrainingWindow] = None,
    ) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = torch_dtype(cfg.dtype)
        self.training_window = training_window
        self.denoiser: torch.nn.Module = self._trained_denoiser()
        self.height, self.width = self._image_size()
        self._reference_copy: Optional[torch.nn.Module] = None
        self.trainable = trainable

        self._freeze_all()
        self._place_modules()
        if cfg.storage_dtype is not None:  # before LoRA: see store_frozen_weights
            store_frozen_weights(self.denoiser, STORAGE_DTYPES[cfg.storage_dtype], self.dtype)
        if trainable and cfg.full_finetune:
            self._setup_full_finetune(with_reference)
        elif trainable:
            self._setup_lora()
        if trainable and cfg.gradient_checkpointing:
            adapter_model(self.denoiser).enable_gradient_checkpointing()
        if cfg.compile:
            compile_blocks(self.denoiser)
        self._trainable_names = {name for name, p in self.denoiser.named_parameters() if p.requires_grad}
        """Names, not Parameter objects: FSDP replaces the objects when it shards the denoiser."""

    # ------------------------------------------------------------------ family hooks

    def _trained_denoiser(self) -> torch.nn.Module:
        """The module trained: the pipeline's ``denoiser_name`` (Wan 2.2 picks one expert or both)."""
        denoiser: torch.nn.Module = getattr(self.pipe, self.denoiser_name)
        return denoiser

    def _frozen_modules(self) -> list[torch.nn.Module]:
        """Further denoisers called but never trained (Wan 2.2's other expert); frozen and placed like the VAE."""
        return []

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's default (height, width): ``default_sample_size * vae_scale_factor`` (SD3, FLUX)."""
        size = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return size, size

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(prompt_embeds, pooled or None) from the pipeline's own ``encode_prompt``."""
        raise NotImplementedError

    def _encode_texts_with_mask(
        self, texts: list[str]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(prompt_embeds, pooled, padding mask or None); families with variable-length text override it."""
        embeds, pooled = self._encode_texts(texts)
        return embeds, pooled, None

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """One denoiser call, exactly as the pipeline makes it."""
        raise NotImplementedError

    def _free_guidance_scale(self, guidance_scale: float) -> float:
        """Scale of classifier-free guidance (uncond + s * (cond - uncond)); <= 1 means none."""
        return guidance_scale

    def _uses_free_guidance(self, scale: float) -> bool:
        """Whether ``scale`` (from :meth:`_free_guidance_scale`) means a guided (two-row) forward."""
        return scale > 1

    def _combine_guidance(self, uncond: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        """The guided output from the unconditional and conditional outputs (float32), as the pipeline combines them."""
        return uncond + scale * (text - uncond)

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Engine latents -> latents the VAE decodes: ``latents / scaling_factor``, ``+ shift_factor`` when the VAE
        has one (SD, SD3, Sana, HunyuanVideo 1.5); packed or per-channel-normalised families override it."""
        config = self.pipe.vae.config
        vae_latents: torch.Tensor = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        return vae_latents if shift is None else vae_latents + shift

    def _vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` from VAE latents (video VAEs override it to drop the frame axis)."""
        images: torch.Tensor = self.pipe.vae.decode(vae_latents, return_dict=False)[0]
        return images

    def schedule(self, num_steps: int) -> Schedule:
        """The model's own schedule for ``num_steps`` (as its pipeline's ``set_timesteps`` makes it)."""
        raise NotImplementedError

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``num`` initial latents, drawn exactly as the pipeline's ``prepare_latents`` draws them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ set-up

    def _image_size(self) -> tuple[int, int]:
        """Configured (height, width), else the pipeline's default."""
        default_height, default_width = self._default_size()
        return self.cfg.height or default_height, self.cfg.width or default_width

    def _text_encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders that are present."""
        modules = [getattr(self.pipe, name, None) for name in TEXT_ENCODER_NAMES]
        return [m for m in modules if m is not None]

    def _freeze_all(self) -> None:
        """Text encoders, VAE and denoiser frozen and in eval mode (training unfreezes what it trains)."""
        for module in [*self._text_encoders(), self.pipe.vae, self.denoiser, *self._frozen_modules()]:
            module.requires_grad_(False)
            module.eval()

    def _offloads(self) -> bool:
        """Whether text encoders live on the CPU between encodings."""
        return self.cfg.offload_text_encoders and self.device.type != "cpu"

    def _place_modules(self) -> None:
        """Denoiser and VAE on the device; text encoders there too unless offloaded."""
        for module in [self.denoiser, *self._frozen_modules(), self.pipe.vae]:
            module.to(self.device)
        encoder_device = torch.device("cpu") if self._offloads() else self.device
        for encoder in self._text_encoders():
            encoder.to(encoder_device)
        self.pipe.set_progress_bar_config(disable=True)

    def _setup_lora(self) -> None:
        """Add a peft LoRA adapter to the denoiser; only its (fp32) weights are trainable."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig as PeftLoraConfig

        lora = self.cfg.lora
        targets = list(lora.target_modules) if lora.target_modules else list(self.default_lora_targets)
        peft_config = PeftLoraConfig(
            r=lora.rank,
            # the ignore: peft annotates lora_alpha as int, but any number works (the scale is alpha / rank)
            lora_alpha=lora.alpha,  # type: ignore[arg-type]
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian" if lora.init_weights == "gaussian" else True,
            target_modules=targets,
        )
        try:
            adapter_model(self.denoiser).add_adapter(peft_config, adapter_name=ADAPTER_NAME)
        except ValueError as error:
            raise ValueError(
                f"model.lora.target_modules {targets} match no layer of the {self.family} {self.denoiser_name} "
                f"({error}); leave it unset for the family default"
            ) from error
        if self.cfg.trainable_fp32:
            cast_training_params(self.denoiser, dtype=torch.float32)
        elif self.cfg.storage_dtype is not None:  # peft moved the adapters to the float8 of the layers they wrap
            cast_training_params(self.denoiser, dtype=self.dtype)

    def _setup_full_finetune(self, with_reference: bool) -> None:
        """Every denoiser weight trainable; a frozen copy is kept only when a reference is needed."""
        if with_reference:
            self._reference_copy = copy.deepcopy(self.denoiser).requires_grad_(False).eval()
        self.denoiser.requires_grad_(True)
        if self.cfg.trainable_fp32:
            self.denoiser.to(torch.float32)

    # ------------------------------------------------------------------ Backbone interface

    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Embed ``prompts`` and the negative prompt once (frozen encoders, no grad)."""
        texts = [str(prompt) for prompt in prompts]
        with torch.no_grad(), self._text_encoders_on_device():
            prompt_embeds, pooled, mask = self._encode_texts_with_mask(texts)
            negative_embeds, negative_pooled, negative_mask = self._encode_texts_with_mask([self.cfg.negative_prompt])
        return TextConditioning(prompt_embeds, negative_embeds, pooled, negative_pooled, mask, negative_mask)

    def model_fn(
        self, conditioning: TextConditioning, guidance_scale: float, schedule: Schedule, *,
        denoiser: Optional[Any] = None,
    ) -> ModelFn:
        """Bind conditioning, CFG and schedule into ``(latents, step_index, cond_index) -> output`` (float32).

        ``denoiser`` (default ``self.denoiser``) is what gets called: a DDP wrapper of it while
        training, :meth:`reference_denoiser` for the KL reference. With CFG the unconditional and
        conditional rows go through one batched forward.
        """
        cond = conditioning.to(self.device)
        guidance = self._free_guidance_scale(guidance_scale)
        guided = self._uses_free_guidance(guidance)
        module = self.denoiser if denoiser is None else denoiser
        dtype = self.dtype if self.cfg.storage_dtype is not None else weights_dtype(module)
        timesteps = schedule.timesteps.to(self.device)

        def model_fn(latents: torch.Tensor, step_index: torch.Tensor, cond_index: torch.Tensor) -> torch.Tensor:
            step_timesteps = timesteps[step_index.to(self.device).long()]
            inputs = self._inputs(cond, latents, step_timesteps, cond_index, dtype, with_uncond=guided)
            output = self._forward(module, inputs, guidance_scale).to(torch.float32)
            if not guided:
                return output
            uncond, text = output.chunk(2)
            return self._combine_guidance(uncond, text, guidance)

        return model_fn

    def reference_denoiser(self) -> torch.nn.Module:
        """The frozen reference policy: the base model under LoRA, or the frozen copy of a full fine-tune.

        A backbone loaded with ``trainable=False`` is its own reference.
        """
        if not self.trainable:
            return self.denoiser
        if self.cfg.full_finetune:
            if self._reference_copy is None:
                raise RuntimeError(
                    "no reference copy of the fully fine-tuned denoiser was made; "
                    "load the backbone with with_reference=True (needed for a KL term)"
                )
            return self._reference_copy
        return WithoutAdapters(self.denoiser)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode final latents to float32 images ``[B, 3, H, W]`` (video: ``[B, F, 3, H, W]``) in [0, 1]."""
        images = []
        for start in range(0, latents.shape[0], self.cfg.decode_batch_size):
            chunk = latents[start : start + self.cfg.decode_batch_size].to(self.device, self.dtype)
            decoded = self._vae_decode(self._to_vae_latents(chunk))
            images.append((decoded.to(torch.float32) / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA weights, or every denoiser weight with ``full_finetune``."""
        return [p for name, p in self.denoiser.named_parameters() if name in self._trainable_names]

    def save_trained(self, folder: Path | str, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
        """LoRA in diffusers format (``pipe.load_lora_weights(folder)``), or the denoiser (safetensors).

        ``weights`` are the trained weights gathered whole (the denoiser's whole state dict with
        ``full_finetune``), for a denoiser whose own weights are FSDP shards.
        """
        if not self.trainable:
            raise RuntimeError("this backbone was loaded with trainable=False and holds nothing trained to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = diffusers_model(self.denoiser)
        if self.cfg.full_finetune:
            target = folder / self.denoiser_name
            if weights is None:
                model.save_pretrained(target, safe_serialization=True)
                return
            from huggingface_hub import save_torch_state_dict

            model.save_config(target)
            save_torch_state_dict(weights, target, filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
            return
        type(self.pipe).save_lora_weights(
            folder,
            safe_serialization=True,
            **{
                f"{self.denoiser_name}_lora_layers": self._lora_state_dict(weights),
                f"{self.denoiser_name}_lora_adapter_metadata": model.peft_config[ADAPTER_NAME].to_dict(),
            },
        )

    # ------------------------------------------------------------------ helpers

    def _lora_state_dict(self, weights: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """The adapter's weights (the module's own, or ``weights``) in the layout the family's LoRA loader expects."""
        from peft.utils import get_peft_model_state_dict

        state: dict[str, torch.Tensor] = get_peft_model_state_dict(
            self.denoiser, state_dict=weights, adapter_name=ADAPTER_NAME
        )
        return state

    def _inputs(
        self,
        cond: TextConditioning,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond_index: torch.Tensor,
        dtype: torch.dtype,
        *,
        with_uncond: bool,
    ) -> DenoiserInputs:
        """Denoiser inputs (in ``dtype``) for the rows; with CFG the unconditional rows come first."""
        x = latents.to(self.device, dtype)
        rows = cond_index.to(self.device).long()
        embeds = cond.prompt_embeds[rows].to(dtype)
        pooled = None if cond.pooled_prompt_embeds is None else cond.pooled_prompt_embeds[rows].to(dtype)
        mask = None if cond.prompt_mask is None else cond.prompt_mask[rows]
        source = None if cond.source_latents is None else cond.source_latents[rows].to(dtype)
        source_embeds = None if cond.source_embeds is None else cond.source_embeds[rows].to(dtype)
        if with_uncond:
            n = x.shape[0]
            x = torch.cat([x, x])
            timesteps = torch.cat([timesteps, timesteps])
            negative = cond.negative_prompt_embeds.to(dtype)
            negative_mask = cond.negative_prompt_mask
            if cond.negative_per_prompt:
                negative = negative[rows]
                negative_mask = None if negative_mask is None else negative_mask[rows]
            else:
                negative = negative.expand(n, *negative.shape[1:])
                negative_mask = None if negative_mask is None else negative_mask.expand(n, *negative_mask.shape[1:])
            embeds, mask = concat_padded([(negative, negative_mask), (embeds, mask)])
            if pooled is not None and cond.negative_pooled_prompt_embeds is not None:
                negative_pooled = cond.negative_pooled_prompt_embeds.to(dtype).expand(n, *pooled.shape[1:])
                pooled = torch.cat([negative_pooled, pooled])
            source = None if source is None else torch.cat([source, source])
            source_embeds = None if source_embeds is None else torch.cat([source_embeds, source_embeds])
        return DenoiserInputs(x, timesteps, embeds, pooled, mask, source, cond.source_ids, source_embeds)

    @contextlib.contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        """Text encoders on the device while encoding; back to the CPU afterwards when offloading."""
        encoders = self._text_encoders()
        for encoder in encoders:
            encoder.to(self.device)
        try:
            yield
        finally:
            if self._offloads():
                for encoder in encoders:
                    encoder.to("cpu")
