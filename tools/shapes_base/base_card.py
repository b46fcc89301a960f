"""The demo base's model card: README.md (tables of held-out reward components by prompt group) and pretrain.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.shapes_base.pretrain import PretrainConfig


def format_result(result: dict[str, float]) -> str:
    """One-line rendering of an evaluation."""
    return " ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "n")


def format_groups(result: dict[str, dict[str, float]]) -> str:
    """One-line rendering of an evaluation by prompt group."""
    return " | ".join(f"{group}: {format_result(values)}" for group, values in result.items())


def _group_table(result: dict[str, dict[str, float]]) -> list[str]:
    """A markdown table of reward components (columns) by prompt group (rows)."""
    keys = [k for k in next(iter(result.values())) if k != "n"]
    lines = ["| prompts | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for group, values in result.items():
        cells = " | ".join("n/a" if math.isnan(values[k]) else f"{values[k]:.3f}" for k in keys)
        lines.append(f"| {group} | {int(values['n'])} | {cells} |")
    return lines


def _steps_text(info: dict[str, Any]) -> str:
    """The transformer's step count, split by run when the base continued another (``--init-from``)."""
    if info.get("previous_steps"):
        total = info["previous_steps"] + info["steps"]
        return f"{total} steps ({info['previous_steps']} + {info['steps']} continued; reproduce with the command chain)"
    return f"{info['steps']} steps; reproduce with `--steps {info['steps']}`"


def write_model_card(out: Path, cfg: PretrainConfig, info: dict[str, Any]) -> None:
    """README.md (human) and pretrain.json (machine) describing how the base was made."""
    (out / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [
        "# treegrpo demo base: a tiny StableDiffusion3Pipeline for the shapes task",
        "",
        "Trained from scratch on procedurally drawn 32x32 shapes (treegrpo.demo.shapes, training",
        "captions only) by `tools/shapes_base/pretrain.py`. Not a general-purpose model.",
        "",
        f"- command: `{info['command']}`",
        f"- seed {cfg.seed}, threads {info['threads']}, on {' and '.join(info.get('devices', ['cpu']))}, wall {info['wall_minutes']:.1f} min (all sessions of the run)",
        f"- autoencoder: two levels, latents 4x16x16, {cfg.vae_steps} steps (batch {cfg.vae_batch}); "
        f"transformer: patch 2, {_steps_text(info)} (batch {cfg.batch})",
        f"- saved weights: exponential moving average (decay {cfg.ema_decay}) of transformer and text encoders",
        f"- size on disk: {info['size_mb']:.1f} MB",
        *([f"- note: {info['note']}"] if "note" in info else []),
        "",
    ]
    for title, key in info["evaluations"]:
        lines += [f"Held-out reward ({title}; ShapesReward components, seed 0):", "", *_group_table(info[key]), ""]
    lines += [
        "Load and sample (there is no T5; keep max_sequence_length=1, as in training):",
        "",
        "```python",
        "from diffusers import StableDiffusion3Pipeline",
        "pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)",
        f'image = pipe("two red circles", num_inference_steps={cfg.sample_steps}, guidance_scale={cfg.guidance_scale},',
        "             height=32, width=32, max_sequence_length=1).images[0]",
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
