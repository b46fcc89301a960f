"""Forward + backward time of one training node per backbone family (median over repeats).

A training node is what the TreeGRPO training pass does per minibatch: one guided model call on
``batch`` parent latents (uncond + cond in one forward), the SDE log-probability of ``k`` children
per parent, a loss on them, and the backward pass into the LoRA weights.

Tiny random models by default (built in a temporary folder)::

    python -m benchmarks.backbone_step --out backbone_step.json
    python -m benchmarks.backbone_step --families qwenimage flux2 zimage wan

or a real pipeline (family read from its model_index.json)::

    python -m benchmarks.backbone_step --path stabilityai/stable-diffusion-3.5-medium --dtype bf16 --size 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

FAMILIES = ("sd3", "flux", "sd", "qwenimage", "flux2", "zimage", "wan", "flux_kontext", "qwenimage_edit", "sana", "ltx2",
            "wan_i2v", "hunyuanvideo15")
EDITING = ("flux_kontext", "qwenimage_edit", "wan_i2v")
"""Families whose prompts carry a source image (the benchmark gives each prompt a random picture)."""
GUIDANCE = {"sd3": 4.5, "flux": 3.5, "sd": 7.5, "qwenimage": 4.0, "flux2": 4.0, "zimage": 3.0, "wan": 5.0,
            "flux_kontext": 2.5, "qwenimage_edit": 4.0, "sana": 4.5, "ltx2": 4.0, "wan_i2v": 5.0,
            "hunyuanvideo15": 6.0}
"""Engine guidance with CFG (Qwen-Image: true CFG; Z-Image: the pipeline's ``cond + s * (cond - uncond)``)."""
NO_GUIDANCE = {"zimage": 0.0}
"""Guidance meaning no CFG where it is not 1."""
NOISE_LEVEL = {"sd3": 0.7, "flux": 0.7, "sd": 1.0, "qwenimage": 1.2, "flux2": 0.7, "zimage": 0.7, "wan": 0.3,
               "flux_kontext": 0.7, "qwenimage_edit": 1.2, "sana": 0.7, "ltx2": 0.7, "wan_i2v": 0.9, "hunyuanvideo15": 0.7}
TINY_SIZE = 32
TINY_MAX_SEQUENCE_LENGTH = {"qwenimage": 256, "flux2": 48, "zimage": 48, "wan": 16, "qwenimage_edit": 512, "sana": 48, "ltx2": 16,
                            "wan_i2v": 512}
"""Text tokens of the tiny models (8 elsewhere): enough to keep the prompt after the chat templates."""
TINY_NUM_FRAMES = {"wan": 5, "ltx2": 5, "wan_i2v": 5, "hunyuanvideo15": 5}
"""Frames of the tiny video models (2 latent frames)."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["sd3", "flux", "sd"], choices=list(FAMILIES))
    parser.add_argument("--path", default=None, help="a real pipeline (folder or hub id) instead of the tiny ones")
    parser.add_argument("--batch", type=int, default=8, help="parent latents per training node")
    parser.add_argument("--children", type=int, default=2, help="child edges scored per parent (k)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--size", type=int, default=None, help="image height = width (default: 32 for the tiny models, else the model's)"
    )
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cfg", action="store_true", help="guidance scale 1 (one forward)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def build_tiny(family: str, folder: Path) -> Path:
    """A tiny pipeline of ``family`` (the test builders) saved under ``folder``."""
    if family == "qwenimage_edit":
        from treegrpo.testing.tiny_edit_models import build_tiny_qwenimage_edit

        return build_tiny_qwenimage_edit(folder / family)
    from treegrpo.testing.tiny_models import BUILDERS

    return BUILDERS[family](folder / family)


def benchmark_prompts(family: str, size: int) -> list[str]:
    """Two prompts; for editing families each carries a random source picture of the output's size."""
    texts = ["a photo of a cat", "a red cube on a table"]
    if family not in EDITING:
        return texts
    import numpy as np
    from PIL import Image

    from treegrpo.data import EditPrompt

    rng = np.random.default_rng(0)
    return [EditPrompt(text, Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))) for text in texts]


def time_family(path: str, args: argparse.Namespace, tiny: bool, family: Optional[str] = None) -> dict[str, Any]:
    """Median forward+backward seconds of one training node on the backbone at ``path``."""
    from treegrpo.models import LoraConfig, ModelConfig, load_backbone

    size = args.size or (TINY_SIZE if tiny else None)
    config = ModelConfig(
        path=path,
        dtype=args.dtype,
        device=args.device,
        height=size,
        width=size,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH.get(family or "", 8) if tiny else 256,
        num_frames=TINY_NUM_FRAMES.get(family or "") if tiny else None,
        lora=LoraConfig(rank=4, alpha=8.0) if tiny else LoraConfig(),
    )
    backbone = load_backbone(config)
    family = backbone.family
    guidance = NO_GUIDANCE.get(family, 1.0) if args.no_cfg else GUIDANCE[family]
    conditioning = backbone.encode_prompts(benchmark_prompts(family, size or 512))
    schedule = backbone.schedule(10)
    stepper = schedule.stepper(NOISE_LEVEL[family])
    model_fn = backbone.model_fn(conditioning, guidance, schedule)
    generator = torch.Generator().manual_seed(0)
    parents = backbone.initial_noise(args.batch, generator).to(backbone.device)
    step_index = torch.full((args.batch,), 3, dtype=torch.long, device=backbone.device)
    cond_index = torch.arange(args.batch, device=backbone.device) % len(conditioning)
    with torch.no_grad():
        drawn = stepper.step(model_fn(parents, step_index, cond_index), parents, step_index, True, generator=None)
    children = drawn.prev_sample.repeat_interleave(args.children, dim=0)
    slot = torch.arange(args.batch, device=backbone.device).repeat_interleave(args.children)

    def node() -> float:
        """One training node; returns its wall time in seconds."""
        for parameter in backbone.trainable_parameters():
            parameter.grad = None
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = model_fn(parents, step_index, cond_index)
        scored = stepper.step(output[slot], parents[slot], step_index[slot], True, prev_sample=children)
        (-scored.log_prob.mean()).backward()
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        node()
    times = [node() for _ in range(args.repeats)]
    return {
        "family": family,
        "batch": args.batch,
        "children": args.children,
        "cfg": not args.no_cfg,
        "latent_shape": list(parents.shape[1:]),
        "trainable_parameters": sum(p.numel() for p in backbone.trainable_parameters()),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": args.repeats,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """A small fixed-width table of the results."""
    print(f"{'family':<9} {'batch':>5} {'k':>3} {'cfg':>5} {'latents':<14} {'median ms':>10} {'min ms':>8}")
    for row in rows:
        shape = "x".join(str(n) for n in row["latent_shape"])
        print(
            f"{row['family']:<9} {row['batch']:>5} {row['children']:>3} {str(row['cfg']):>5} {shape:<14} "
            f"{1000 * row['median_s']:>10.1f} {1000 * row['min_s']:>8.1f}"
        )


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Run the benchmark; print a table and optionally write JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="backbone-step-") as folder:
        if args.path:
            rows.append(time_family(args.path, args, tiny=False))
        else:
            for family in args.families:
                rows.append(time_family(str(build_tiny(family, Path(folder))), args, tiny=True, family=family))
    print_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype}
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
