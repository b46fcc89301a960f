"""Before/after parity of the three reward-preprocessing fixes of issue 18, on the same inputs.

1. HPS v2.1 on non-square images: old = short side -> 224 + centre crop; new = hpsv2's
   ``preprocess_val`` (open_clip ``ResizeMaxSize``: long side -> 224, zero pad). Reference: that
   definition written out here (bicubic tensor resize, ``F.pad``). Unit: 8-bit levels of the pixels.
2. HPS tokenisation: old = transformers' tokenizer on the raw prompt, padded with its pad token;
   new = ``HPSv2Reward.tokenize``. Reference: open_clip's cleaning applied by hand (the expected
   clean strings below), BPE by the same tokenizer, zero padding. Tokenizer: the tests'
   character-level CLIP vocabulary (no hub access here). Unit: prompts whose ids differ.
3. PIL-style bicubic (``clip_preprocess(pil_resample=True)``: ImageReward, PickScore, CLIPScore,
   aesthetic): old = float antialiased resize rounded once; new = ``pil_resize``. Reference: PIL's
   ``Image.resize(..., BICUBIC)`` itself. Unit: 8-bit levels.

    python -m benchmarks.reward_parity --out benchmarks/results/reward_parity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from treegrpo.rewards.base import (
    center_crop,
    quantize_uint8,
    resize_longest_side_and_pad,
    resize_shortest_side,
    resized_shape,
)
from treegrpo.rewards.pil_resample import pil_resize
from treegrpo.rewards.text_clean import open_clip_clean, pad_token_ids
from treegrpo.testing import reward_fixtures as fx

SHAPES = [(512, 384), (384, 512), (300, 700), (576, 1024), (231, 224), (1000, 333)]
ODD_PROMPTS = {
    "a photo of a cat": "a photo of a cat",
    "fish &amp;amp; chips on a plate": "fish & chips on a plate",
    "ＳＤ３ poster, ﬁne print": "sd3 poster, fine print",
    "  A\tDOG\n\nin   the snow ": "a dog in the snow",
    "&lt;neon&gt; sign": "<neon> sign",
    "Café ÜBER at night": "café über at night",
}


def hard_edged(height: int, width: int, seed: int) -> np.ndarray:
    """Black/white 4-pixel blocks, thin stripes and a saturated band (maximal cubic overshoot)."""
    g = np.random.default_rng(seed)
    blocks = (g.random((height // 4 + 1, width // 4 + 1, 3)) > 0.5).repeat(4, 0).repeat(4, 1)[:height, :width]
    image = blocks.astype(np.uint8) * 255
    image[:, ::7] = 255 - image[:, ::7]
    image[height // 2 : height // 2 + 3] = (255, 0, 0)
    return image


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def hpsv2_reference(image: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's ResizeMaxSize on a tensor, as hpsv2's preprocess_val runs it (before Normalize)."""
    h, w = image.shape[-2:]
    scale = size / float(max(h, w))
    nh, nw = round(h * scale), round(w * scale)
    x = F.interpolate(quantize_uint8(image), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    ph, pw = size - nh, size - nw
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=0.0)


def hps_preprocess() -> dict[str, Any]:
    rows = []
    for i, (h, w) in enumerate(SHAPES):
        image = to_tensor(hard_edged(h, w, seed=i))
        ref = hpsv2_reference(image, 224)
        old = center_crop(resize_shortest_side(quantize_uint8(image), 224), 224, "torchvision")
        new = resize_longest_side_and_pad(quantize_uint8(image), 224)
        rows.append({"shape": [h, w], "before": float((old - ref).abs().max() * 255), "after": float((new - ref).abs().max() * 255)})
    return {"unit": "8-bit levels, max over pixels", "rows": rows,
            "before": max(r["before"] for r in rows), "after": max(r["after"] for r in rows)}


def hps_tokens() -> dict[str, Any]:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as root:
        tok = CLIPTokenizer.from_pretrained(fx.clip_tokenizer_folder(Path(root)))
    length = 77
    raw = list(ODD_PROMPTS)
    reference = pad_token_ids([tok(c, truncation=True, max_length=length)["input_ids"] for c in ODD_PROMPTS.values()], length)
    old = tok(raw, padding="max_length", max_length=length, truncation=True, return_tensors="pt")["input_ids"]
    new = pad_token_ids([tok(open_clip_clean(p), truncation=True, max_length=length)["input_ids"] for p in raw], length)
    text_len = (reference != 0).sum(dim=1)
    return {
        "unit": f"prompts whose ids differ from open_clip's (of {len(raw)})",
        "before": int((old != reference).any(dim=1).sum()),
        "before_text_only": int(sum(bool((old[i] != reference[i])[: max(int(text_len[i]), 1)].any()) for i in range(len(raw)))),
        "after": int((new != reference).any(dim=1).sum()),
        "old_pad_id": int(tok.pad_token_id),
    }


def pil_bicubic() -> dict[str, Any]:
    rows = []
    for i, (h, w) in enumerate(SHAPES):
        array = hard_edged(h, w, seed=100 + i)
        nh, nw = resized_shape(h, w, 224)
        ref = torch.from_numpy(np.asarray(Image.fromarray(array).resize((nw, nh), Image.BICUBIC)).copy()).permute(2, 0, 1).float()
        image = to_tensor(array)
        old = quantize_uint8(resize_shortest_side(image, 224))[0] * 255
        new = pil_resize(image, (nh, nw))[0] * 255
        rows.append({
            "shape": [h, w], "resized": [nh, nw],
            "before": float((old - ref).abs().max()), "before_mean": float((old - ref).abs().mean()),
            "before_pixels_off": float((old != ref).float().mean()),
            "after": float((new - ref).abs().max()), "after_pixels_off": float((new != ref).float().mean()),
        })
    return {"unit": "8-bit levels, max over pixels", "rows": rows,
            "before": max(r["before"] for r in rows), "after": max(r["after"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"hps_preprocess": hps_preprocess(), "hps_tokens": hps_tokens(), "pil_bicubic": pil_bicubic()}
    import PIL

    result["pillow"] = PIL.__version__
    result["torch"] = torch.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| fix | inputs | unit | before | after |")
    print("|---|---|---|---|---|")
    shapes = ", ".join(f"{h}x{w}" for h, w in SHAPES)
    p = result["hps_preprocess"]
    print(f"| 1. HPS v2.1 non-square preprocessing vs hpsv2's ResizeMaxSize | hard-edged {shapes} | {p['unit']} | {p['before']:.1f} | {p['after']:.1f} |")
    t = result["hps_tokens"]
    print(f"| 2. HPS tokenisation vs open_clip's cleaning + 0 padding | {len(ODD_PROMPTS)} odd prompts | {t['unit']} | {t['before']} ({t['before_text_only']} in the text itself, the rest in padding: old pad id {t['old_pad_id']}) | {t['after']} |")
    b = result["pil_bicubic"]
    print(f"| 3. PIL-style bicubic vs PIL {result['pillow']} Image.resize(BICUBIC) | hard-edged {shapes}, short side -> 224 | {b['unit']} | {b['before']:.0f} | {b['after']:.0f} |")
    for row in b["rows"]:
        print(f"|    {row['shape'][0]}x{row['shape'][1]} -> {row['resized'][0]}x{row['resized'][1]} | | max / mean levels, pixels off | "
              f"{row['before']:.0f} / {row['before_mean']:.2f} / {100 * row['before_pixels_off']:.1f} % | {row['after']:.0f} / 0 / {100 * row['after_pixels_off']:.1f} % |")


if __name__ == "__main__":
    main()
