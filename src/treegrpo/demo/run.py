"""``treegrpo demo``: RL post-training of the shipped shapes base on the CPU, before/after in one line.

    treegrpo demo [--iterations N | --minutes M] [--method treegrpo] [--seed 0] [--output-dir RUN]
                  [--eval-prompts 256] [--threads 2] [--overwrite] [dotted.key=value ...]

Loads the tiny SD3 base shipped in the package (``builtin:shapes``), evaluates it on held-out
prompts (ODE samples, fixed noise), trains it with the chosen preset through the ordinary trainer
(so RUN has the same layout as ``treegrpo train``: config.yaml, metrics.jsonl, eval.jsonl,
tensorboard/, checkpoints/, final/), evaluates again on the same prompts and noise, and writes

    RUN/before_after.png   the first 24 held-out prompts: base (left) and trained (right) samples, each
                           with its caption and reward
    RUN/report.png         reward curves (training reward per component, held-out reward, NFE, s/iter)
    RUN/trees/step-N.png   the decoded image at every node of one tree of the last rollout

The default settings were chosen from measurements on a 2-core CPU (see TUNING.md next to this
file); they fit the whole run, loading and both evaluations included, in 7-8.5 minutes there,
and gained +0.045, +0.064 and +0.079 held-out reward on seeds 0, 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("treegrpo.demo")

DEMO_CONFIG: dict[str, Any] = {
    "model": {
        "path": "builtin:shapes",
        "dtype": "fp32",
        "device": "cpu",
        "lora": {"rank": 8, "alpha": 8},
        "max_sequence_length": 1,
        "decode_batch_size": 256,
    },
    "data": {"builtin": "shapes", "prompts_per_iteration": 16, "num_eval_prompts": 256},
    "tree": {"k": 3, "window": 3},
    "loss": {"clip_eps": 1.0e-2},  # 1e-4 clipped ~half the edges after the first of ~7 steps per iteration
    # no CFG: half the cost per sample, and the base's room to improve is larger (TUNING.md)
    "sampling": {"steps": 4, "noise_level": 0.7, "guidance_scale": 1.0, "max_batch": 256},
    "reward": "shapes",
    "train": {
        "iterations": 100,
        "lr": 1.0e-3,
        "parents_per_batch": 32,  # ~7 optimizer steps per iteration instead of 1
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
        "eval_every": 0,
        "progress": False,
    },
}
"""The demo's settings (on top of the method preset); dotted overrides on the command line win."""

ITERATIONS_PER_MINUTE = 14.0
"""Training iterations per minute of the default settings on a 2-core CPU (for ``--minutes``)."""

FIXED_MINUTES = 0.5
"""Minutes of a default run that are not training iterations (loading, two evaluations, pictures)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="treegrpo demo",
        description="Train the shipped tiny shapes model with a GRPO-family preset on the CPU; "
        "print its held-out reward before and after.",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, help=f"training iterations (default {DEMO_CONFIG['train']['iterations']})")
    length.add_argument("--minutes", type=float, help="rough wall-time budget in minutes (2-core CPU rate); sets --iterations")
    p.add_argument("--method", default="treegrpo", help="method preset (treegrpo, flow_grpo, dance_grpo, mix_grpo, branch_grpo, ddpo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", help="run folder (default: runs/demo-<time>)")
    p.add_argument("--eval-prompts", type=int, default=512, help="held-out prompts of the before/after evaluation")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 2,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 2)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's files in --output-dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=1e-4")
    return p


def iterations_for(minutes: float) -> int:
    """Iterations that fit in ``minutes`` at the measured 2-core rate (at least 1)."""
    return max(1, int((minutes - FIXED_MINUTES) * ITERATIONS_PER_MINUTE))


def demo_config(args: argparse.Namespace) -> Any:
    """The resolved TrainerConfig of a demo run."""
    from treegrpo.config import ConfigError, check_method, resolve_config

    check_method(args.method, "--method")
    if args.eval_prompts < 1:
        raise ConfigError(f"--eval-prompts must be >= 1, got {args.eval_prompts}")
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {args.minutes}")
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"unexpected argument {item!r}; demo overrides look like dotted.key=value")
    iterations = args.iterations if args.iterations is not None else (
        iterations_for(args.minutes) if args.minutes is not None else DEMO_CONFIG["train"]["iterations"]
    )
    output_dir = args.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [
        f"seed={args.seed}", f"output_dir={output_dir}", f"train.iterations={iterations}",
        f"data.num_eval_prompts={args.eval_prompts}", *args.overrides,
    ]
    return resolve_config(DEMO_CONFIG, overrides, source="demo settings", method=args.method)


BEFORE_AFTER_PAIRS = 24
"""Held-out prompts shown in before_after.png (the first ones of the fixed evaluation set)."""


def grid_cells(grid: Path, count: int, total: int) -> torch.Tensor:
    """The first ``count`` of the ``total`` square images in a sample grid PNG (``trainer.image_grid`` layout)."""
    import numpy as np
    import torch
    from PIL import Image

    array = np.asarray(Image.open(grid).convert("RGB"), dtype=np.float32) / 255
    columns = math.ceil(math.sqrt(total))
    size = array.shape[1] // columns - 2
    cells = []
    for i in range(count):
        row, column = divmod(i, columns)
        top, left = row * (size + 2) + 1, column * (size + 2) + 1
        cells.append(array[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2)


def before_after_png(before: Path, after: Path, prompts: Sequence[str], scores: tuple[float, float], file: Path) -> None:
    """Base and trained samples of the first held-out prompts side by side, captioned, with each image's reward."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from treegrpo.demo.reward import ShapesReward

    shown = min(BEFORE_AFTER_PAIRS, len(prompts))
    base, trained = grid_cells(before, shown, len(prompts)), grid_cells(after, shown, len(prompts))
    reward = ShapesReward()
    base_scores, trained_scores = reward(base, prompts[:shown]), reward(trained, prompts[:shown])
    columns = min(6, shown)
    rows = math.ceil(shown / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 1.75 * rows + 0.7), squeeze=False)
    gap = torch.ones(3, base.shape[2], 2)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= shown:
            continue
        pair = torch.cat([base[i], gap, trained[i]], dim=2).permute(1, 2, 0).numpy()
        ax.imshow(pair, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(prompts[i], 26)), fontsize=7)
        ax.text(0.5, -0.04, f"{float(base_scores[i]):.2f} -> {float(trained_scores[i]):.2f}", fontsize=7,
                ha="center", va="top", transform=ax.transAxes)
    fig.suptitle(f"held-out reward over {len(prompts)} prompts: base {scores[0]:.3f} -> trained {scores[1]:.3f}\n"
                 f"first {shown} prompts, base (left) and trained (right), same noise", fontsize=9)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def _steps(folder: Path) -> list[Path]:
    """The raw ``step-NNNNNN.png`` pictures (not their ``-captioned`` copies), oldest first."""
    from treegrpo.report import step_pictures

    return step_pictures(folder)


def summarize(run: Path, eval_prompts: Sequence[str]) -> dict[str, Any]:
    """Base and trained held-out rewards of a finished run, and its pictures."""
    from treegrpo.report import make_report, read_jsonl

    evals = read_jsonl(run / "eval.jsonl")
    if len(evals) < 2:
        raise RuntimeError(f"{run}/eval.jsonl holds {len(evals)} evaluations; expected the base's and the trained model's")
    first, last = evals[0], evals[-1]
    samples, trees = _steps(run / "samples"), _steps(run / "trees")
    before_after = run / "before_after.png"
    before_after_png(samples[0], samples[-1], eval_prompts, (first["eval/score"], last["eval/score"]), before_after)
    curves, _ = make_report(run)
    return {"base": first, "trained": last, "before_after": before_after, "curves": curves,
            "tree": trees[-1] if trees else None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``treegrpo demo`` (also ``python -m treegrpo.demo.run``)."""
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow options
    import torch

    torch.set_num_threads(max(1, args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from treegrpo.data import load_prompt_sets
    from treegrpo.trainer import train

    start = time.time()
    cfg = demo_config(args)
    run = Path(cfg.output_dir)
    logger.info("demo: %s on the shipped shapes base, %d iterations, %d held-out prompts, %d threads -> %s",
                cfg.method, cfg.train.iterations, cfg.data.num_eval_prompts, torch.get_num_threads(), run)
    train(cfg, overwrite=args.overwrite)
    out = summarize(run, load_prompt_sets(cfg.data, cfg.seed).eval)
    minutes = (time.time() - start) / 60
    base, trained = out["base"]["eval/score"], out["trained"]["eval/score"]
    n = cfg.data.num_eval_prompts
    summary = {"method": cfg.method, "seed": cfg.seed, "iterations": cfg.train.iterations, "eval_prompts": n,
               "base": out["base"], "trained": out["trained"], "minutes": minutes}
    (run / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"held-out reward ({n} prompts) base {base:.3f} -> trained {trained:.3f} ({trained - base:+.3f}) "
        f"after {cfg.train.iterations} {cfg.method} iterations in {minutes:.1f} min | run {run} | "
        f"before/after {out['before_after']} | reward curves {out['curves']} | tree {out['tree']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    import sys

    logging.basicConfig(format="%(message)s")
    logging.getLogger("treegrpo").setLevel(logging.INFO)
    sys.exit(main())
