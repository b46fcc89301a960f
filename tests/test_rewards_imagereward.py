"""ImageReward on transformers' BLIP classes: key mapping of a tiny ImageReward.pt, and the score
against a plain-torch forward written from BLIP's vit.py / med.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from treegrpo.testing import reward_fixtures as fx
from treegrpo.rewards import get_reward
from treegrpo.rewards.base import clip_preprocess
from treegrpo.rewards.imagereward import (
    REWARD_MEAN,
    REWARD_STD,
    load_imagereward_modules,
    split_imagereward_state,
)

PROMPTS = ["a red cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("imagereward")
    state = fx.tiny_imagereward_state()
    path = root / "ImageReward.pt"
    torch.save(state, path)
    return path, fx.bert_tokenizer_folder(root), state


def test_key_mapping_covers_every_key(files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    _, _, state = files
    vision_sd, text_sd, mlp_sd, ignored = split_imagereward_state(state)
    assert sorted(ignored) == sorted(
        ["blip.text_encoder.embeddings.position_ids", "blip.vision_proj.weight", "blip.vision_proj.bias",
         "blip.text_proj.weight", "blip.text_proj.bias"]
    )
    assert len(vision_sd) + len(text_sd) + len(mlp_sd) + len(ignored) == len(state)
    vision, text, mlp = load_imagereward_modules(state, head_width=16)  # strict: raises on any gap
    assert set(vision.state_dict()) == set(vision_sd)
    assert set(text.state_dict()) == set(text_sd)
    assert set(mlp.state_dict()) == set(mlp_sd)
    assert vision.config.image_size == 32 and vision.config.layer_norm_eps == 1e-6
    assert text.config.encoder_hidden_size == 32 and text.config.num_attention_heads == 2
    with pytest.raises(ValueError, match="unknown ImageReward keys"):
        split_imagereward_state({**state, "blip.itm_head.weight": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="unknown ImageReward keys"):
        split_imagereward_state({**state, "blip.visual_encoder.head.weight": torch.zeros(2, 32)})


def test_end_to_end_matches_blip_reference(files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    path, tokenizer, state = files
    reward = get_reward(
        "imagereward", checkpoint=str(path), tokenizer=str(tokenizer), head_width=16,
        local_files_only=True, device="cpu", batch_size=1,
    )
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32

    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (2, 35) and (tokens["input_ids"][:, 0] == 2).all()  # [CLS] first
    pixels = clip_preprocess(images, 32, crop_rounding="torchvision", pil_resample=True)
    with torch.no_grad():
        raw = fx.imagereward_reference(state, pixels, tokens["input_ids"], tokens["attention_mask"], v_heads=2, t_heads=2)
    torch.testing.assert_close(scores, (raw - REWARD_MEAN) / REWARD_STD, rtol=1e-4, atol=1e-4)


def test_tokenizer_gets_blip_special_tokens(files: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    path, tokenizer, _ = files
    reward = get_reward("imagereward", checkpoint=str(path), tokenizer=str(tokenizer), head_width=16, local_files_only=True)
    vocab = reward.tokenizer.get_vocab()
    assert vocab["[DEC]"] == fx.BERT_VOCAB - 2 and vocab["[ENC]"] == fx.BERT_VOCAB - 1
    assert reward.tokenizer.bos_token == "[DEC]"
    assert "[ENC]" not in reward.tokenizer.tokenize("a red cat")
