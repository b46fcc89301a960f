"""Tiny random-weight diffusers pipelines built from config dicts, saved with ``save_pretrained``.

No downloads: tokenizers get in-memory vocabularies (character-level CLIP, a few-piece T5), every
model is a one-layer toy. Reuse them in any test that needs a real pipeline folder::

    path = build_tiny_sd3(tmp_path / "sd3")
    backbone = load_backbone(ModelConfig(path=str(path), dtype="fp32", device="cpu"))

Latents are 32 x 32 (VAE scale factor 1), so one forward at batch 8 takes tens of milliseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from treegrpo.rewards.text_clean import bytes_to_unicode

TINY_SIZE = 32
"""Image height and width (pixels = latent cells, the VAE does not downsample)."""

TINY_MAX_SEQUENCE_LENGTH = 8
"""T5 sequence length to pass to the pipelines and to ``ModelConfig.max_sequence_length``."""


def _byte_characters() -> list[str]:
    """The 256 stand-ins of byte-level BPE in GPT-2's vocabulary order: the printable bytes, then the others."""
    return sorted(bytes_to_unicode().values(), key=ord)


def tiny_clip_tokenizer():  # -> CLIPTokenizer
    """Character-level CLIP tokenizer; the end token has the highest id (CLIP pools there)."""
    from transformers import CLIPTokenizer

    characters = _byte_characters()
    pieces = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_config(tokenizer: Any) -> dict[str, Any]:
    """A one-layer T5 / UMT5 encoder's config over ``tokenizer`` (the two share their fields)."""
    return dict(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)


def tiny_t5_tokenizer():  # -> T5Tokenizer
    """Unigram T5 tokenizer over single characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
    pieces += [(chr(c), -3.0) for c in range(ord("0"), ord("9") + 1)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text_model(tokenizer, hidden: int, projection: int | None, seed: int):
    """A one-layer CLIP text encoder (with a projection head when ``projection`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(config).eval()


def _tiny_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None, seed: int):
    """A one-block AutoencoderKL (scale factor 1) with the given latent normalisation."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        sample_size=TINY_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def build_tiny_sd3(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny StableDiffusion3Pipeline (two CLIP encoders, no T5) to ``path``; returns it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    path = Path(path)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_SIZE,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()
    tokenizer = tiny_clip_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(4, scaling_factor=1.5305, shift_factor=0.0609, seed=seed + 1),
        text_encoder=_clip_text_model(tokenizer, hidden=16, projection=32, seed=seed + 2),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text_model(tokenizer, hidden=16, projection=32, seed=seed + 3),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(path)
    _declare_missing_components(path, ("text_encoder_3", "tokenizer_3"))
    return path


def _declare_missing_components(path: Path, names: tuple[str, ...]) -> None:
    """Write ``[null, null]`` entries for absent components so plain ``from_pretrained`` loads."""
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    for name in names:
        index.setdefault(name, [None, None])
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_tiny_flux(path: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Save a tiny FluxPipeline (CLIP + T5, FLUX.1-dev-style guidance embedding) to ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[4, 4, 8],
    ).eval()
    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(**tiny_t5_config(t5_tokenizer))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    clip_tokenizer = tiny_clip_tokenizer()
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_tiny_vae(1, scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 1),
        text_encoder=_clip_text_model(clip_tokenizer, hidden=32, projection=None, seed=seed + 3),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_flux_kontext(path: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Save a tiny FluxKontextPipeline: the tiny FLUX.1 components (Kontext adds no trained part)."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    path = Path(path)
    flux = FluxPipeline.from_pretrained(build_tiny_flux(path.with_name(path.name + "-flux"), seed, guidance_embeds))
    FluxKontextPipeline(**{name: getattr(flux, name) for name in (
        "transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"
    )}).save_pretrained(path)
    return path


def build_tiny_sd(path: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a tiny StableDiffusionPipeline (UNet, DDIM scheduler, no safety checker) to ``path``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=TINY_SIZE,
        in_channels=4,
        out_channels=4,
        norm_num_groups=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    tokenizer = tiny_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=_tiny_vae(4, scaling_factor=0.18215, shift_factor=None, seed=seed + 1),
        text_encoder=_clip_text_model(tokenizer, hidden=32, projection=None, seed=seed + 2),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""A Qwen3-style chat template (user turns, generation prompt, empty think block when thinking is off)."""


def tiny_qwen_tokenizer():  # -> Qwen2Tokenizer
    """Byte-level (no merges) Qwen2 tokenizer with the Qwen special tokens and a chat template."""
    from transformers import Qwen2Tokenizer

    vocab = {character: index for index, character in enumerate(_byte_characters())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _qwen3_config(tokenizer, hidden: int, layers: int):  # -> Qwen3Config
    """A Qwen3 text config of ``layers`` layers, two heads of ``hidden / 2``, over the tiny vocabulary."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_tiny_qwenimage(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny QwenImagePipeline (Qwen2.5-VL text encoder, Qwen-Image VAE, published scheduler) to ``path``."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0],
        latents_std=[1.5, 0.8, 1.2, 2.0],
    ).eval()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        vocab_size=len(tokenizer),
        hidden_size=16,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_token_id=ids["<|image_pad|>"],
    )
    torch.manual_seed(seed + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen/Qwen-Image's published scheduler config
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        num_train_timesteps=1000,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    pipe = QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_flux2(path: str | Path, seed: int = 0, is_distilled: bool = False) -> Path:
    """Save a tiny Flux2KleinPipeline (27-layer Qwen3 text encoder, batch-norm latents) to ``path``.

    27 layers because the pipeline stacks hidden states 9, 18 and 27 (the released 4B/9B encoders).
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    path = Path(path)
    tokenizer = tiny_qwen_tokenizer()
    hidden = 8
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * hidden,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(
        sample_size=TINY_SIZE,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    with torch.no_grad():  # non-trivial latent statistics, so the de-normalisation is exercised
        vae.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05, 0.3]))
        vae.bn.running_var.copy_(torch.tensor([1.5, 0.6, 2.0, 1.1]))
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3ForCausalLM(_qwen3_config(tokenizer, hidden=hidden, layers=27)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(  # black-forest-labs/FLUX.2-klein's published scheduler config
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        num_train_timesteps=1000,
        shift=3.0,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=is_distilled,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_zimage(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny ZImagePipeline (two-layer Qwen3 text encoder, 16-channel latents) to ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    path = Path(path)
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    ).eval()
    with torch.no_grad():  # the padding tokens are torch.empty in the constructor
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3Model(_qwen3_config(tokenizer, hidden=16, layers=2)).eval()
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
        vae=_tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 1),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_wan(path: str | Path, seed: int = 0, two_experts: bool = False, boundary_ratio: float = 0.7) -> Path:
    """Save a tiny WanPipeline (T5 encoder, Wan VAE 4x temporal / 8x spatial, Euler scheduler) to ``path``.

    ``two_experts``: Wan 2.2's layout, a second transformer for the low-noise steps below
    ``boundary_ratio``. The transformer follows diffusers' own tiny Wan test config.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)

    def transformer(offset: int):  # -> WanTransformer3DModel
        torch.manual_seed(seed + offset)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ).eval()

    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(**tiny_t5_config(tokenizer))).eval()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer(0),
        transformer_2=transformer(3) if two_experts else None,
        boundary_ratio=boundary_ratio if two_experts else None,
    )
    pipe.save_pretrained(path)
    return path



def _in_module(module: str) -> Callable[..., Path]:
    """The builder ``build_tiny_<family>`` of ``treegrpo.testing.<module>`` (a module of its own), imported when called."""
    def build(path: str | Path, seed: int = 0, **options: Any) -> Path:
        builder: Callable[..., Path] = getattr(importlib.import_module(f"treegrpo.testing.{module}"), f"build_{module}")
        return builder(path, seed, **options)

    return build


BUILDERS = {
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "flux_kontext": build_tiny_flux_kontext,
    "sd": build_tiny_sd,
    "qwenimage": build_tiny_qwenimage,
    "flux2": build_tiny_flux2,
    "flux2_dev": _in_module("tiny_flux2_dev"),
    "zimage": build_tiny_zimage,
    "wan": build_tiny_wan,
    "sana": _in_module("tiny_sana"),
    "ltx2": _in_module("tiny_ltx2"),
    "wan_i2v": _in_module("tiny_wan_i2v"),
    "hunyuanvideo15": _in_module("tiny_hunyuanvideo15"),
}


@functools.lru_cache(maxsize=None)
def tiny_pipeline(family: str, **options: object) -> Path:
    """A tiny pipeline folder of ``family`` built once per test process (deleted at exit).

    ``options`` go to the builder (``prediction_type="v_prediction"``, ``guidance_embeds=False``).
    """
    root = Path(tempfile.mkdtemp(prefix=f"tiny-{family}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return BUILDERS[family](root / "pipeline", **options)


def load_pipeline_like_a_user(path: str | Path):  # -> DiffusionPipeline
    """``DiffusionPipeline.from_pretrained`` in fp32, passing ``None`` for components saved as null."""
    from diffusers import DiffusionPipeline

    index = json.loads((Path(path) / "model_index.json").read_text())
    absent = {name: None for name, value in index.items() if value == [None, None]}
    pipe = DiffusionPipeline.from_pretrained(path, **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run tiny models on ``count`` intra-op threads (far faster on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
