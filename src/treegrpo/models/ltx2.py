"""LTX-2 text-to-video (``LTX2Pipeline``) as a policy of the tree engine; the audio branch is carried, not trained for.

LTX-2 is one audio-video transformer: video and audio tokens attend to each other in every block
(audio-to-video and video-to-audio cross-attention), and ``LTX2Pipeline`` always denoises both streams;
neither it nor the transformer has a video-only mode that leaves the video as the pipeline makes it
(``isolate_modalities`` cuts the cross-attention and so changes the video). So the audio is **carried
along deterministically**: a node's latents are the video tokens followed by the audio tokens, flattened
into one row ``[N, S_v * C_v + S_a * C_a]`` (both packed as ``prepare_latents`` / ``prepare_audio_latents``
pack them, both drawn from the pipeline's generator in its order). Every step advances the audio by the
Euler (ODE) step on the same sigmas, also where the video takes an SDE or branching step; the step's
log-probability is the video stream's alone (:class:`AudioVideoStepper`), so the policy whose ratio
GRPO clips is the video stream's Gaussian given the node, and only the video is decoded and scored
(``decode`` gives clips ``[B, F, 3, H, W]``; image rewards score sampled frames, ``rewards/video.py``).
The audio is never decoded; it moves only through the video's influence on it and through LoRA
layers it shares with the video. The likelihood-free objectives (DiffusionNFT, AWM) re-noise and
regress the whole row, audio included.

Mirrors the pipeline's ``__call__`` otherwise: Gemma-3's stacked hidden states (``max_sequence_length``
tokens, left padded) through the pipeline's text connectors once per prompt (video embeddings in
``prompt_embeds``, audio embeddings in ``pooled_prompt_embeds``, the connectors' mask in ``prompt_mask``);
sigmas ``linspace(1, 1/T, T)`` shifted by ``mu`` from the video token count (base 1024 / 4096 tokens,
shifts 0.95 / 2.05, as the pipeline defaults them) through the scheduler's ``set_timesteps``; the
transformer called with the raw timestep as ``timestep`` and ``sigma``, ``fps`` = 24 (the pipeline's
default ``frame_rate``), ``use_cross_timestep=True``. CFG is ``uncond + s * (cond - uncond)`` on both
streams with the one ``sampling.guidance_scale`` (the pipeline's x0-space delta is the same linear map);
the pipeline's further guidance terms are not reproduced and must be off to compare with it:
``stg_scale=0``, ``modality_scale=1``, ``guidance_rescale=0`` and ``audio_guidance_scale`` equal to
``guidance_scale`` (its defaults are 1, 3, 0.7 and 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from treegrpo.math.sampling import FlowMatchStepper, FlowSchedule, SdeType, StepOutput, flow_step
from treegrpo.models.common import DenoiserInputs, DiffusersBackbone, checked_image_size, checked_num_frames

LTX2_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Every attention projection of the blocks: video and audio self- and text cross-attention, and the
audio-video cross-attention between the streams."""

DEFAULT_FRAMES = 121
"""The pipeline's ``num_frames`` for checkpoints without a duration head (LTX-2.0)."""
FRAME_RATE = 24.0
"""The pipeline's default ``frame_rate`` (it sets the audio length and the video RoPE's time axis)."""


@dataclass
class AudioVideoStepper(FlowMatchStepper):
    """The flow step on the first ``video_size`` values of a row, the Euler (ODE) step on the rest (the audio).

    ``log_prob`` is the video part's; the audio part's std is zero. With ``prev_sample`` the video part
    is scored and ``prev_sample`` returned as it is.
    """

    video_size: int = 0

    def step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        step_index: torch.Tensor,
        stochastic: torch.Tensor | bool,
        *,
        prev_sample: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> StepOutput:
        cut = self.video_size
        video = super().step(
            model_output[:, :cut], sample[:, :cut], step_index, stochastic,
            prev_sample=None if prev_sample is None else prev_sample[:, :cut], generator=generator,
        )
        sigmas = self.sigmas.to(sample.device)
        index = step_index.to(sample.device).long()
        audio = flow_step(model_output[:, cut:], sample[:, cut:], sigmas[index], sigmas[index + 1], 0.0)
        prev = torch.cat([video.prev_sample, audio.prev_sample], dim=1) if prev_sample is None else prev_sample.float()
        return StepOutput(
            prev, video.log_prob, torch.cat([video.mean, audio.mean], dim=1), torch.cat([video.std, audio.std], dim=1)
        )


@dataclass(frozen=True)
class AudioVideoSchedule(FlowSchedule):
    """LTX-2's sigmas and timesteps; its stepper treats the first ``video_size`` values of a row as the video."""

    video_size: int = 0

    def stepper(self, noise_level: float, sde_type: SdeType = SdeType.sde) -> AudioVideoStepper:
        """The flow step (SDE strength ``noise_level``) on the video, the ODE step on the audio."""
        return AudioVideoStepper(self.sigmas, noise_level=noise_level, sde_type=sde_type, video_size=self.video_size)


@dataclass(frozen=True)
class Layout:
    """Token grid of one clip: video latent frames / height / width and channels, audio latent frames and channels."""

    frames: int
    height: int
    width: int
    channels: int
    audio_frames: int
    audio_channels: int

    @property
    def video_size(self) -> int:
        return self.frames * self.height * self.width * self.channels


class LTX2Backbone(DiffusersBackbone):
    """LTX-2 audio-video transformer policy of the video stream; see the module docstring."""

    family = "ltx2"
    denoiser_name = "transformer"
    default_lora_targets = LTX2_LORA_TARGETS

    # ------------------------------------------------------------------ layout

    def _default_size(self) -> tuple[int, int]:
        """The pipeline's defaults: 512 x 768."""
        return 512, 768

    def _image_size(self) -> tuple[int, int]:
        """Configured or default size; both sides multiples of 32 (the pipeline's check) and of the VAE grid."""
        multiple = max(32, self.pipe.vae_spatial_compression_ratio * self.pipe.transformer_spatial_patch_size)
        return checked_image_size(super()._image_size(), multiple, self.family)

    @property
    def num_frames(self) -> int:
        """Frames per clip (``model.num_frames``, default 121); ``frames - 1`` a multiple of the VAE's temporal factor."""
        frames = self.cfg.num_frames or DEFAULT_FRAMES
        factor = self.pipe.vae_temporal_compression_ratio * self.pipe.transformer_temporal_patch_size
        return checked_num_frames(frames, factor, self.family, f"{1 + 4 * factor} or 121")

    def _layout(self) -> Layout:
        """The packed token grid of a ``height x width x num_frames`` clip, as ``LTX2Pipeline.__call__`` computes it."""
        pipe = self.pipe
        patch, patch_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        latent_frames = (self.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        audio_vae = pipe.audio_vae.config
        per_second = pipe.audio_sampling_rate / pipe.audio_hop_length / float(pipe.audio_vae_temporal_compression_ratio)
        mel_bins = audio_vae.mel_bins // pipe.audio_vae_mel_compression_ratio
        return Layout(
            frames=latent_frames // patch_t,
            height=self.height // pipe.vae_spatial_compression_ratio // patch,
            width=self.width // pipe.vae_spatial_compression_ratio // patch,
            channels=pipe.transformer.config.in_channels * patch * patch * patch_t,
            audio_frames=round(self.num_frames / FRAME_RATE * per_second),
            audio_channels=audio_vae.latent_channels * mel_bins,
        )

    # ------------------------------------------------------------------ family hooks

    def _text_encoders(self) -> list[torch.nn.Module]:
        """Gemma-3 and the text connectors (frozen, offloaded with the encoder)."""
        modules = [getattr(self.pipe, name, None) for name in ("text_encoder", "connectors")]
        return [m for m in modules if m is not None]

    def _freeze_all(self) -> None:
        """As the base class; the audio VAE and vocoder (never called here) frozen too."""
        super()._freeze_all()
        for name in ("audio_vae", "vocoder"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()

    def _encode_texts_with_mask(
        self, texts: list[str]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(video embeddings, audio embeddings, mask) from Gemma-3 through the pipeline's connectors."""
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompt=texts, do_classifier_free_guidance=False, max_sequence_length=self.cfg.max_sequence_length,
            device=self.device,
        )
        padding_side = getattr(self.pipe.tokenizer, "padding_side", "left")
        video, audio, connector_mask = self.pipe.connectors(embeds, mask, padding_side=padding_side)
        return video, audio, connector_mask.bool()

    def schedule(self, num_steps: int) -> AudioVideoSchedule:
        """The pipeline's sigmas ``linspace(1, 1/T, T)`` through ``set_timesteps(sigmas=, mu=)``, ``mu`` from the video tokens."""
        from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

        layout = self._layout()
        config = self.pipe.scheduler.config
        mu = calculate_shift(
            layout.frames * layout.height * layout.width, config.get("base_image_seq_len", 1024),
            config.get("max_image_seq_len", 4096), config.get("base_shift", 0.95), config.get("max_shift", 2.05),
        )
        scheduler = self.pipe.scheduler.__class__.from_config(config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device=self.device, mu=mu)
        return AudioVideoSchedule(
            scheduler.sigmas.to(self.device, torch.float32), scheduler.timesteps.to(self.device), layout.video_size
        )

    def initial_noise(self, num: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Rows of video then audio noise, drawn by ``prepare_latents`` then ``prepare_audio_latents`` (float32)."""
        layout = self._layout()
        video: torch.Tensor = self.pipe.prepare_latents(
            num, self.pipe.transformer.config.in_channels, self.height, self.width, self.num_frames, 0.0,
            torch.float32, self.device, generator,
        )
        audio_vae = self.pipe.audio_vae.config
        audio: torch.Tensor = self.pipe.prepare_audio_latents(
            num, num_channels_latents=audio_vae.latent_channels, audio_latent_length=layout.audio_frames,
            num_mel_bins=audio_vae.mel_bins, noise_scale=0.0, dtype=torch.float32, device=self.device, generator=generator,
        )
        return torch.cat([video.flatten(1), audio.flatten(1)], dim=1)

    def _forward(self, denoiser: torch.nn.Module, inputs: DenoiserInputs, guidance_scale: float) -> torch.Tensor:
        """Video and audio velocities of the rows, flattened and joined like the latents.

        Without audio text embeddings (random conditioning in the GPU benchmark) the video ones stand in:
        LTX-2.0's connectors give both streams embeddings of the same width.
        """
        layout = self._layout()
        x = inputs.latents
        rows = x.shape[0]
        video = x[:, : layout.video_size].reshape(rows, -1, layout.channels)
        audio = x[:, layout.video_size :].reshape(rows, layout.audio_frames, layout.audio_channels)
        audio_embeds = inputs.pooled_prompt_embeds if inputs.pooled_prompt_embeds is not None else inputs.prompt_embeds
        video_out, audio_out = denoiser(
            hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=inputs.prompt_embeds,
            audio_encoder_hidden_states=audio_embeds, timestep=inputs.timesteps, sigma=inputs.timesteps,
            encoder_attention_mask=inputs.prompt_mask, audio_encoder_attention_mask=inputs.prompt_mask,
            num_frames=layout.frames, height=layout.height, width=layout.width, fps=FRAME_RATE,
            audio_num_frames=layout.audio_frames, use_cross_timestep=True, return_dict=False,
        )
        return torch.cat([video_out.flatten(1), audio_out.flatten(1)], dim=1)

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The video part unpacked to ``[B, C, F, H, W]`` and denormalised (``* std / scaling_factor + mean``)."""
        layout = self._layout()
        pipe = self.pipe
        video = latents[:, : layout.video_size].reshape(latents.shape[0], -1, layout.channels)
        unpacked = pipe._unpack_latents(video, layout.frames, layout.height, layout.width,
                                        pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
        vae = pipe.vae
        denormalised: torch.Tensor = pipe._denormalize_latents(
            unpacked, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )
        return denormalised

    def _vae_decode(self, vae_latents: torch.Tensor) -> torch.Tensor:
        """Clips in [-1, 1] as ``[B, F, 3, H, W]``; a timestep-conditioned VAE gets the pipeline's ``decode_timestep=0``."""
        vae = self.pipe.vae
        timestep = None
        if vae.config.timestep_conditioning:
            timestep = torch.zeros(vae_latents.shape[0], device=vae_latents.device, dtype=vae_latents.dtype)
        clips: torch.Tensor = vae.decode(vae_latents, timestep, return_dict=False)[0]
        return clips.transpose(1, 2)

