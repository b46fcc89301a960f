"""CLIP-family rewards: preprocessing by hand, HPS v2.1 key mapping against an open_clip-style
reference forward, PickScore / CLIPScore / aesthetic on tiny checkpoints, and the real LAION head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from treegrpo.testing import reward_fixtures as fx
from treegrpo.rewards import get_reward
from treegrpo.rewards.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clip_preprocess,
    crop_offsets,
    quantize_uint8,
    resized_shape,
)
from treegrpo.rewards.clip_scorers import (
    PreferenceMLP,
    load_openclip_as_clip_model,
    openclip_config,
    openclip_to_transformers,
)
from treegrpo.rewards.weights import WeightsNotFoundError, load_state_dict

PROMPTS = ["a red cat", "a photo of a dog"]
AESTHETIC_HEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "sac+logos+ava1-l14-linearMSE.pth"
"""The real LAION aesthetic head, where the checkout has ``../shared/data`` beside it."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- preprocessing


def test_resize_and_crop_geometry_by_hand() -> None:
    assert resized_shape(512, 512, 224) == (224, 224)
    assert resized_shape(300, 256, 224) == (262, 224)  # int(224 * 300 / 256) = int(262.5)
    assert resized_shape(100, 150, 224) == (224, 336)
    # excess 7: torchvision round(3.5) = 4 (half to even), transformers 7 // 2 = 3
    assert crop_offsets(231, 224, 224, "torchvision") == (4, 0)
    assert crop_offsets(231, 224, 224, "floor") == (3, 0)
    assert crop_offsets(224, 229, 224, "torchvision") == (0, 2)  # round(2.5) = 2
    with pytest.raises(ValueError, match="resize first"):
        crop_offsets(100, 300, 224, "floor")


def test_preprocess_equals_hand_computation_on_a_fixed_image() -> None:
    """An image already 224 wide: no resampling, so every output pixel is computable by hand."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 231, 224, generator=g)
    out = clip_preprocess(image, 224, crop_rounding="torchvision", pil_resample=True)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    hand = ((image * 255).round() / 255)[:, :, 4:228, :]
    torch.testing.assert_close(out, (hand - mean) / std, rtol=0, atol=1e-6)
    # a constant image stays constant through the bicubic resize: (c - mean) / std exactly
    flat = torch.full((2, 3, 300, 500), 0.6)
    out = clip_preprocess(flat, 224, crop_rounding="floor", pil_resample=False)
    c = round(0.6 * 255) / 255
    torch.testing.assert_close(out, ((torch.full((2, 3, 224, 224), c)) - mean) / std, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- HPS v2.1


def _hpsv2_preprocess_reference(images: torch.Tensor, size: int, *, antialias: bool) -> torch.Tensor:
    """hpsv2's preprocess_val written from open_clip's ResizeMaxSize: ToTensor, long side -> size
    (round each side of ``side * size / max``), bicubic tensor resize, pad [left, top, right, bottom]
    = [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2] with 0, Normalize."""
    out = []
    for image in quantize_uint8(images):
        h, w = image.shape[-2:]
        scale = size / float(max(h, w))
        nh, nw = round(h * scale), round(w * scale)
        x = torch.nn.functional.interpolate(image[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=antialias)[0]
        canvas = torch.zeros(3, size, size)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[:, top : top + nh, left : left + nw] = x
        out.append(canvas)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (torch.stack(out) - mean) / std


@pytest.fixture(scope="module")
def hps_files(root: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    state = fx.tiny_open_clip_state()
    path = root / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": state}, path)
    return path, fx.clip_tokenizer_folder(root), state


def test_open_clip_mapping_covers_every_key(hps_files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    from transformers import CLIPModel

    _, _, state = hps_files
    mapped, ignored = openclip_to_transformers(state)
    config = openclip_config(state, vision_head_width=16, text_head_width=12, eos_token_id=fx.CLIP_VOCAB - 1)
    model_keys = set(CLIPModel(config).state_dict())
    assert ignored == []
    assert set(mapped) == model_keys  # nothing missing, nothing extra
    # in_proj splits into 3, every other tensor maps one-to-one
    n_in_proj = sum(k.endswith(("in_proj_weight", "in_proj_bias")) for k in state)
    assert len(mapped) == len(state) + 2 * n_in_proj
    assert config.vision_config.image_size == 32 and config.vision_config.num_attention_heads == 2
    with pytest.raises(ValueError, match="unknown open_clip keys"):
        openclip_to_transformers({**state, "visual.head.weight": torch.zeros(1)})


def test_hpsv2_end_to_end_matches_open_clip_reference(
    hps_files: tuple[Path, Path, dict[str, torch.Tensor]], images: torch.Tensor
) -> None:
    path, tokenizer, state = hps_files
    reward = get_reward(
        "hpsv2", checkpoint=str(path), tokenizer=str(tokenizer), vision_head_width=16, text_head_width=12,
        local_files_only=True, device="cpu", batch_size=1,
    )
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32

    pixels = _hpsv2_preprocess_reference(images, 32, antialias=True)
    tokens = reward.tokenize(PROMPTS)["input_ids"]
    assert tokens.shape == (2, 16) and (tokens[:, 0] == fx.CLIP_VOCAB - 2).all()
    assert (tokens[:, -1] == 0).all()  # open_clip pads with id 0
    with torch.no_grad():
        image_ref, text_ref = fx.open_clip_reference(state, pixels, tokens, v_heads=2, t_heads=2)
    torch.testing.assert_close(scores, (image_ref * text_ref).sum(-1), rtol=1e-4, atol=1e-5)

    # a plain state dict (no "state_dict" wrapper) loads the same
    plain = path.with_name("plain.pt")
    torch.save(state, plain)
    model = load_openclip_as_clip_model(load_state_dict(plain, key="state_dict"), what="t", vision_head_width=16, text_head_width=12)
    assert torch.equal(model.logit_scale, state["logit_scale"])


def test_wrong_head_width_and_missing_checkpoint_are_one_line_errors(
    hps_files: tuple[Path, Path, dict[str, torch.Tensor]], root: Path
) -> None:
    path, tokenizer, _ = hps_files
    with pytest.raises(ValueError, match="head widths"):
        get_reward("hpsv2", checkpoint=str(path), tokenizer=str(tokenizer), vision_head_width=7, local_files_only=True)
    with pytest.raises(WeightsNotFoundError) as info:
        get_reward("hpsv2", checkpoint=str(root / "nowhere.pt"), tokenizer=str(tokenizer), local_files_only=True)
    message = str(info.value)
    assert "\n" not in message and "nowhere.pt" in message and "huggingface.co/xswu/HPSv2" in message
    with pytest.raises(WeightsNotFoundError) as info:
        get_reward("hpsv2", checkpoint="no-such-owner/no-such-repo", tokenizer=str(tokenizer), local_files_only=True)
    assert "\n" not in str(info.value) and "HPS_v2.1_compressed.pt" in str(info.value)


# ----------------------------------------------------------------------------- PickScore / CLIPScore


@pytest.fixture(scope="module")
def clip_folder(root: Path) -> Path:
    return fx.tiny_clip_folder(root)


def _hf_clip_logits(folder: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIPModel's own forward: logit_scale.exp() * cos, the diagonal of logits_per_image."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    tokens = CLIPTokenizer.from_pretrained(folder)(prompts, padding=True, return_tensors="pt")
    pixels = clip_preprocess(images, 32, crop_rounding="floor", pil_resample=True)
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal()


def test_pickscore_is_scaled_cosine(clip_folder: Path, images: torch.Tensor) -> None:
    reward = get_reward("pickscore", model=str(clip_folder), processor=str(clip_folder), local_files_only=True, device="cpu")
    scores = reward(images, PROMPTS)
    torch.testing.assert_close(scores, _hf_clip_logits(clip_folder, images, PROMPTS), rtol=1e-4, atol=1e-4)


def test_clipscore_scale_and_clamp(clip_folder: Path, images: torch.Tensor) -> None:
    raw = get_reward("clipscore", model=str(clip_folder), local_files_only=True, device="cpu")(images, PROMPTS)
    logits = _hf_clip_logits(clip_folder, images, PROMPTS)
    from transformers import CLIPModel

    scale = CLIPModel.from_pretrained(clip_folder).logit_scale.exp().item()
    torch.testing.assert_close(raw, logits / scale, rtol=1e-4, atol=1e-5)
    hessel = get_reward("clipscore", model=str(clip_folder), scale=2.5, clamp_negative=True, local_files_only=True)
    torch.testing.assert_close(hessel(images, PROMPTS), 2.5 * raw.clamp(min=0), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- aesthetic


def _hand_mlp(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """LAION's MLP without its (inactive at eval) dropouts: five affine maps, no activations."""
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x


def test_aesthetic_end_to_end_on_tiny_checkpoint(clip_folder: Path, root: Path, images: torch.Tensor) -> None:
    from transformers import CLIPModel

    head = fx.tiny_mlp_state([16, 12, 8, 8, 4, 1], seed=5)
    head_path = root / "head.pth"
    torch.save(head, head_path)
    reward = get_reward("aesthetic", clip_model=str(clip_folder), head=str(head_path), local_files_only=True, device="cpu")
    scores = reward(images, PROMPTS)

    clip = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = clip_preprocess(images, 32, crop_rounding="floor", pil_resample=True)
    with torch.no_grad():
        embeds = clip.get_image_features(pixel_values=pixels)
        embeds = embeds if isinstance(embeds, torch.Tensor) else embeds.pooler_output
        expected = _hand_mlp(head, embeds / embeds.norm(dim=-1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    # a folder holding the default file name also resolves
    (root / "heads").mkdir(exist_ok=True)
    torch.save(head, root / "heads" / "sac+logos+ava1-l14-linearMSE.pth")
    again = get_reward("aesthetic", clip_model=str(clip_folder), head=str(root / "heads"), local_files_only=True)
    torch.testing.assert_close(again(images, PROMPTS), scores)


def test_missing_aesthetic_head_names_the_source(clip_folder: Path, root: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        get_reward("aesthetic", clip_model=str(clip_folder), head=str(root / "absent.pth"), local_files_only=True)
    assert "\n" not in str(info.value) and "improved-aesthetic-predictor" in str(info.value)


@pytest.mark.skipif(not AESTHETIC_HEAD.is_file(), reason="real LAION aesthetic head not in ../shared/data")
def test_real_aesthetic_head_matches_hand_mlp() -> None:
    state = load_state_dict(AESTHETIC_HEAD)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    mlp = PreferenceMLP.from_state_dict(state, what="LAION head")
    assert [m.out_features for m in mlp.layers if isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]
    embed = torch.randn(3, 768, generator=torch.Generator().manual_seed(6))
    embed = embed / embed.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        got = mlp(embed)
    torch.testing.assert_close(got, _hand_mlp(state, embed), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all() and got.abs().max() < 50


def test_incomplete_transformers_checkpoint_is_refused(clip_folder: Path, root: Path) -> None:
    """transformers would re-initialise a missing weight silently; the loader refuses instead."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = root / "broken_clip"
    shutil.copytree(clip_folder, broken, dirs_exist_ok=True)
    weights = broken / "model.safetensors"
    state = load_file(str(weights))
    del state["visual_projection.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 weight"):
        get_reward("pickscore", model=str(broken), processor=str(clip_folder), local_files_only=True)


def test_hpsv2_runs_in_bfloat16(hps_files: tuple[Path, Path, dict[str, torch.Tensor]], images: torch.Tensor) -> None:
    path, tokenizer, _ = hps_files
    kwargs = dict(checkpoint=str(path), tokenizer=str(tokenizer), vision_head_width=16, text_head_width=12, local_files_only=True)
    full = get_reward("hpsv2", **kwargs)(images, PROMPTS)
    half = get_reward("hpsv2", dtype="bf16", **kwargs)(images, PROMPTS)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0, atol=0.05)


def test_hpsv2_antialias_option_reaches_the_resize(hps_files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    """antialias=False reproduces torchvision < 0.17's plain bicubic tensor resize."""
    path, tokenizer, state = hps_files
    kwargs = dict(checkpoint=str(path), tokenizer=str(tokenizer), vision_head_width=16, text_head_width=12, local_files_only=True)
    images = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(7))  # downscaled: the kernels differ
    reward = get_reward("hpsv2", antialias=False, **kwargs)
    pixels = _hpsv2_preprocess_reference(images, 32, antialias=False)
    with torch.no_grad():
        image_ref, text_ref = fx.open_clip_reference(state, pixels, reward.tokenize(PROMPTS)["input_ids"], v_heads=2, t_heads=2)
    torch.testing.assert_close(reward(images, PROMPTS), (image_ref * text_ref).sum(-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(get_reward("hpsv2", **kwargs)(images, PROMPTS), reward(images, PROMPTS), atol=1e-6)


def test_hpsv2_tokenize_cleans_like_open_clip(hps_files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    """HTML entities (double-escaped), full-width letters, a ligature, odd whitespace: the ids equal
    those of the hand-cleaned prompt (open_clip's definition), padded with 0; so do the scores."""
    from transformers import CLIPTokenizer

    path, tokenizer, _ = hps_files
    kwargs = dict(checkpoint=str(path), tokenizer=str(tokenizer), vision_head_width=16, text_head_width=12, local_files_only=True)
    reward = get_reward("hpsv2", **kwargs)
    odd = ["  Ａ\tＣＡＴ &amp;amp;\n dog ", "ﬁsh &lt;3  \u3000 Caf\u00e9", "&lt;3 &amp;amp; <"]
    clean = ["a cat & dog", "fish <3 café", "<3 & <"]
    tok = CLIPTokenizer.from_pretrained(tokenizer)
    expected = torch.zeros(3, 16, dtype=torch.long)
    for row, text in enumerate(clean):
        ids = tok(text)["input_ids"][:16]
        expected[row, : len(ids)] = torch.tensor(ids)
    assert torch.equal(reward.tokenize(odd)["input_ids"], expected)
    images = torch.rand(3, 3, 36, 28, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(reward(images, odd), reward(images, clean), rtol=0, atol=0)
    # without the cleaning the raw transformers ids differ (what the fix is for); transformers 4.x's
    # own ftfy pass fixes the first two, but leaves entities next to a literal "<" escaped
    assert tok(odd[2])["input_ids"] != tok(clean[2])["input_ids"]
