"""Tiny tokenizers and random checkpoints in the official key layouts, for the reward tests and the
reward-parity benchmark.

Also two small plain-torch reference forwards written from the original architectures (open_clip's
ViT/text tower on ``nn.MultiheadAttention``; BLIP's timm ViT + BERT with cross-attention), used to
check that the key mapping onto transformers' classes computes the same function.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from treegrpo.rewards.text_clean import bytes_to_unicode


# ----------------------------------------------------------------------------- tokenizers


def clip_tokenizer_folder(root: Path) -> Path:
    """A character-level CLIP BPE tokenizer (no merges); end token has the highest id.

    Written as vocab.json + merges.txt and loaded from them, which transformers 4.x and 5.x both
    accept (4.x's ``CLIPTokenizer`` takes no in-memory vocab).
    """
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())  # in byte order
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder = root / "clip_tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    CLIPTokenizer.from_pretrained(folder, model_max_length=77).save_pretrained(folder)
    return folder


def bert_tokenizer_folder(root: Path) -> Path:
    """A tiny uncased WordPiece tokenizer (letters and a few words)."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "red", "photo", "of"]
    words += [chr(c) for c in range(ord("b"), ord("z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    folder = root / "bert_tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(words)) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


CLIP_VOCAB = 514  # 2 * 256 byte symbols + start + end
BERT_VOCAB = 62 + 2  # tiny vocab above + BLIP's [DEC] and [ENC]


# ----------------------------------------------------------------------------- open_clip (HPS v2) layout


def _block(prefix: str, width: int, mlp: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape: int, s: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    return {
        f"{prefix}ln_1.weight": 1 + r(width, s=0.1),
        f"{prefix}ln_1.bias": r(width, s=0.1),
        f"{prefix}attn.in_proj_weight": r(3 * width, width),
        f"{prefix}attn.in_proj_bias": r(3 * width),
        f"{prefix}attn.out_proj.weight": r(width, width),
        f"{prefix}attn.out_proj.bias": r(width),
        f"{prefix}ln_2.weight": 1 + r(width, s=0.1),
        f"{prefix}ln_2.bias": r(width, s=0.1),
        f"{prefix}mlp.c_fc.weight": r(mlp, width),
        f"{prefix}mlp.c_fc.bias": r(mlp),
        f"{prefix}mlp.c_proj.weight": r(width, mlp),
        f"{prefix}mlp.c_proj.bias": r(width),
    }


def tiny_open_clip_state(
    *, v_width: int = 32, t_width: int = 24, embed: int = 16, patch: int = 8, grid: int = 4,
    context: int = 16, layers: int = 2, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random open_clip CLIP weights with the ViT-H-14 key names (tiny widths)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    state = {
        "positional_embedding": r(context, t_width),
        "text_projection": r(t_width, embed),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.class_embedding": r(v_width),
        "visual.positional_embedding": r(grid * grid + 1, v_width),
        "visual.proj": r(v_width, embed),
        "visual.conv1.weight": r(v_width, 3, patch, patch, s=0.05),
        "visual.ln_pre.weight": 1 + r(v_width, s=0.1),
        "visual.ln_pre.bias": r(v_width, s=0.1),
        "visual.ln_post.weight": 1 + r(v_width, s=0.1),
        "visual.ln_post.bias": r(v_width, s=0.1),
        "token_embedding.weight": r(CLIP_VOCAB, t_width),
        "ln_final.weight": 1 + r(t_width, s=0.1),
        "ln_final.bias": r(t_width, s=0.1),
    }
    for i in range(layers):
        state.update(_block(f"visual.transformer.resblocks.{i}.", v_width, 4 * v_width, g))
        state.update(_block(f"transformer.resblocks.{i}.", t_width, 4 * t_width, g))
    return state


def _open_clip_block(x: torch.Tensor, s: dict[str, torch.Tensor], p: str, heads: int, causal: bool) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock (pre-LN, nn.MultiheadAttention, exact GELU)."""
    width = x.shape[-1]
    attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    attn.load_state_dict({
        "in_proj_weight": s[p + "attn.in_proj_weight"], "in_proj_bias": s[p + "attn.in_proj_bias"],
        "out_proj.weight": s[p + "attn.out_proj.weight"], "out_proj.bias": s[p + "attn.out_proj.bias"],
    })
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1) if causal else None
    h = F.layer_norm(x, (width,), s[p + "ln_1.weight"], s[p + "ln_1.bias"])
    x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = F.layer_norm(x, (width,), s[p + "ln_2.weight"], s[p + "ln_2.bias"])
    h = F.linear(F.gelu(F.linear(h, s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"])), s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"])
    return x + h


def open_clip_reference(
    s: dict[str, torch.Tensor], pixels: torch.Tensor, tokens: torch.Tensor, *, v_heads: int, t_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip ``encode_image`` / ``encode_text`` (normalised), written from its structure."""
    layers = len({k.split(".")[3] for k in s if k.startswith("visual.transformer.resblocks.")})
    vw = s["visual.class_embedding"].shape[0]
    x = F.conv2d(pixels, s["visual.conv1.weight"], stride=s["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].expand(x.shape[0], 1, vw), x], dim=1) + s["visual.positional_embedding"]
    x = F.layer_norm(x, (vw,), s["visual.ln_pre.weight"], s["visual.ln_pre.bias"])
    for i in range(layers):
        x = _open_clip_block(x, s, f"visual.transformer.resblocks.{i}.", v_heads, causal=False)
    x = F.layer_norm(x[:, 0], (vw,), s["visual.ln_post.weight"], s["visual.ln_post.bias"])
    image = x @ s["visual.proj"]
    tw = s["token_embedding.weight"].shape[1]
    t = s["token_embedding.weight"][tokens] + s["positional_embedding"]
    for i in range(layers):
        t = _open_clip_block(t, s, f"transformer.resblocks.{i}.", t_heads, causal=True)
    t = F.layer_norm(t, (tw,), s["ln_final.weight"], s["ln_final.bias"])
    text = t[torch.arange(t.shape[0]), tokens.argmax(dim=-1)] @ s["text_projection"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


# ----------------------------------------------------------------------------- ImageReward layout


def tiny_mlp_state(widths: list[int], seed: int = 0, prefix: str = "layers.") -> dict[str, torch.Tensor]:
    """Random weights for the 5-linear preference MLP (keys layers.0/2/4/6/7)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
        state[f"{prefix}{idx}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        state[f"{prefix}{idx}.bias"] = torch.randn(o, generator=g) * 0.1
    return state


def tiny_imagereward_state(
    *, v_width: int = 32, t_width: int = 32, patch: int = 8, grid: int = 4, layers: int = 2,
    positions: int = 40, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random ImageReward.pt weights with the official key names (tiny ViT + BERT + MLP)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    state = {
        v + "cls_token": r(1, 1, v_width),
        v + "pos_embed": r(1, grid * grid + 1, v_width),
        v + "patch_embed.proj.weight": r(v_width, 3, patch, patch, s=0.05),
        v + "patch_embed.proj.bias": r(v_width),
        v + "norm.weight": 1 + r(v_width, s=0.1),
        v + "norm.bias": r(v_width, s=0.1),
        t + "embeddings.word_embeddings.weight": r(BERT_VOCAB, t_width),
        t + "embeddings.position_embeddings.weight": r(positions, t_width),
        t + "embeddings.LayerNorm.weight": 1 + r(t_width, s=0.1),
        t + "embeddings.LayerNorm.bias": r(t_width, s=0.1),
        t + "embeddings.position_ids": torch.arange(positions).unsqueeze(0),
        "blip.vision_proj.weight": r(8, v_width),
        "blip.vision_proj.bias": r(8),
        "blip.text_proj.weight": r(8, t_width),
        "blip.text_proj.bias": r(8),
    }
    for i in range(layers):
        p = f"{v}blocks.{i}."
        state.update({
            p + "norm1.weight": 1 + r(v_width, s=0.1), p + "norm1.bias": r(v_width, s=0.1),
            p + "attn.qkv.weight": r(3 * v_width, v_width), p + "attn.qkv.bias": r(3 * v_width),
            p + "attn.proj.weight": r(v_width, v_width), p + "attn.proj.bias": r(v_width),
            p + "norm2.weight": 1 + r(v_width, s=0.1), p + "norm2.bias": r(v_width, s=0.1),
            p + "mlp.fc1.weight": r(4 * v_width, v_width), p + "mlp.fc1.bias": r(4 * v_width),
            p + "mlp.fc2.weight": r(v_width, 4 * v_width), p + "mlp.fc2.bias": r(v_width),
        })
        p = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", t_width), ("crossattention", v_width)):
            state.update({
                f"{p}{att}.self.query.weight": r(t_width, t_width), f"{p}{att}.self.query.bias": r(t_width),
                f"{p}{att}.self.key.weight": r(t_width, kv_in), f"{p}{att}.self.key.bias": r(t_width),
                f"{p}{att}.self.value.weight": r(t_width, kv_in), f"{p}{att}.self.value.bias": r(t_width),
                f"{p}{att}.output.dense.weight": r(t_width, t_width), f"{p}{att}.output.dense.bias": r(t_width),
                f"{p}{att}.output.LayerNorm.weight": 1 + r(t_width, s=0.1),
                f"{p}{att}.output.LayerNorm.bias": r(t_width, s=0.1),
            })
        state.update({
            p + "intermediate.dense.weight": r(4 * t_width, t_width), p + "intermediate.dense.bias": r(4 * t_width),
            p + "output.dense.weight": r(t_width, 4 * t_width), p + "output.dense.bias": r(t_width),
            p + "output.LayerNorm.weight": 1 + r(t_width, s=0.1), p + "output.LayerNorm.bias": r(t_width, s=0.1),
        })
    state.update(tiny_mlp_state([t_width, 24, 16, 12, 8, 1], seed=seed + 1, prefix="mlp.layers."))
    return state


def _mha(q_in: torch.Tensor, kv_in: torch.Tensor, s: dict[str, torch.Tensor], p: str, heads: int, bias: torch.Tensor | None) -> torch.Tensor:
    """BERT-style attention from separate query/key/value Linear weights."""
    b, n, w = q_in.shape
    d = w // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, d).transpose(1, 2)

    q = split(F.linear(q_in, s[p + "query.weight"], s[p + "query.bias"]))
    k = split(F.linear(kv_in, s[p + "key.weight"], s[p + "key.bias"]))
    v = split(F.linear(kv_in, s[p + "value.weight"], s[p + "value.bias"]))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)


def imagereward_reference(
    s: dict[str, torch.Tensor], pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    *, v_heads: int, t_heads: int,
) -> torch.Tensor:
    """ImageReward's raw MLP output, written from BLIP's vit.py / med.py structure."""
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    vw = s[v + "cls_token"].shape[-1]
    layers = len({k.split(".")[3] for k in s if k.startswith(v + "blocks.")})
    x = F.conv2d(pixels, s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"], stride=s[v + "patch_embed.proj.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + s[v + "pos_embed"]
    for i in range(layers):
        p = f"{v}blocks.{i}."
        h = F.layer_norm(x, (vw,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        b, n, _ = h.shape
        qkv = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(b, n, 3, v_heads, vw // v_heads).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (vw // v_heads) ** -0.5).softmax(-1) @ qkv[2]
        x = x + F.linear(a.transpose(1, 2).reshape(b, n, vw), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (vw,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
    image = F.layer_norm(x, (vw,), s[v + "norm.weight"], s[v + "norm.bias"], eps=1e-6)

    tw = s[t + "embeddings.word_embeddings.weight"].shape[1]
    n = input_ids.shape[1]
    y = s[t + "embeddings.word_embeddings.weight"][input_ids] + s[t + "embeddings.position_embeddings.weight"][:n]
    y = F.layer_norm(y, (tw,), s[t + "embeddings.LayerNorm.weight"], s[t + "embeddings.LayerNorm.bias"], eps=1e-12)
    pad_bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0  # BLIP's extended mask
    for i in range(len({k.split(".")[4] for k in s if k.startswith(t + "encoder.layer.")})):
        p = f"{t}encoder.layer.{i}."
        for att, kv, bias in (("attention", None, pad_bias), ("crossattention", image, None)):
            a = _mha(y, y if kv is None else kv, s, f"{p}{att}.self.", t_heads, bias)
            a = F.linear(a, s[f"{p}{att}.output.dense.weight"], s[f"{p}{att}.output.dense.bias"])
            y = F.layer_norm(a + y, (tw,), s[f"{p}{att}.output.LayerNorm.weight"], s[f"{p}{att}.output.LayerNorm.bias"], eps=1e-12)
        h = F.gelu(F.linear(y, s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"]))
        h = F.linear(h, s[p + "output.dense.weight"], s[p + "output.dense.bias"])
        y = F.layer_norm(h + y, (tw,), s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"], eps=1e-12)
    z = y[:, 0]
    for idx in (0, 2, 4, 6, 7):
        z = F.linear(z, s[f"mlp.layers.{idx}.weight"], s[f"mlp.layers.{idx}.bias"])
    return z.squeeze(1)


# ----------------------------------------------------------------------------- transformers CLIP folders


def tiny_clip_folder(root: Path, *, projection: int = 16, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny transformers ``CLIPModel`` + the tiny tokenizer saved together (PickScore/CLIPScore layout)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=CLIP_VOCAB - 2,
                         eos_token_id=CLIP_VOCAB - 1, pad_token_id=CLIP_VOCAB - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection,
    )
    folder = root / "tiny_clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(clip_tokenizer_folder(root)).save_pretrained(folder)
    return folder
