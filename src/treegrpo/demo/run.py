"""``treegrpo demo``: RL post-training of the shipped shapes base on the CPU, before/after in one line.

    treegrpo demo [--minutes 9 | --iterations N] [--method treegrpo] [--seed 0] [--output-dir RUN]
                  [--eval-prompts N] [--eval-points 5] [--threads 2] [--overwrite] [dotted.key=value ...]

``--minutes`` is a wall-clock budget for the whole command, kept by measuring while running: the
trainer stops before an iteration that would not leave time for the final evaluation, so a slower
machine runs fewer iterations instead of running late.

Loads the tiny SD3 base shipped in the package (``builtin:shapes``), evaluates it on held-out
prompts (ODE samples, fixed noise), trains it with the chosen preset through the ordinary trainer
(so RUN has the same layout as ``treegrpo train``: config.yaml, metrics.jsonl, eval.jsonl,
tensorboard/, checkpoints/, final/), evaluates again on the same prompts and noise, and writes

    RUN/before_after.png   the first 24 held-out prompts: base (left) and trained (right) samples, each
                           with its caption and reward
    RUN/report.png         reward curves (training reward per component, held-out reward, NFE, s/iter)
    RUN/trees/step-N.png   the decoded image at every node of one tree of the last rollout

The default settings were chosen from measurements on a 2-core CPU (the repository's
docs/DEMO-TUNING.md, whose figures also say what each seed gained).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

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
    "data": {"builtin": "shapes", "prompts_per_iteration": 16, "num_eval_prompts": 1024},
    # the background is decided at the first step, by the initial noise and that step's SDE noise: all
    # branching there (8 children of each root), ODE after (docs/DEMO-TUNING.md, session 9)
    "tree": {"k": 8, "window": 1, "window_placement": "fixed", "window_start": 0},
    "loss": {"clip_eps": 1.0e-2},  # 1e-4 clipped ~half the edges after the first of several steps per iteration
    # the base's own sampler: 8 steps (a 3-step window leaves an ODE tail), no CFG (docs/DEMO-TUNING.md: CFG lowers its reward)
    "sampling": {"steps": 8, "noise_level": 0.7, "guidance_scale": 1.0, "max_batch": 256},
    # what the demo teaches: a white background (a preference the base meets half the time), with the
    # compositional reward kept in the objective and scored alone as the held-out judge of faithfulness
    "reward": {"shapes": 1.0, "shapes_style": 1.0},
    # the gain must not be tied to the training sampler: base and trained model also sampled with twice the steps
    "eval": {"rewards": "shapes", "more_steps": 16, "more_steps_samples": 256},
    "train": {
        "iterations": 100,
        "lr": 3.0e-4,  # 1e-3 peaked after ~20 iterations, then fell below the base (docs/DEMO-TUNING.md)
        "parents_per_batch": 32,  # several optimizer steps per iteration instead of one
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
        "eval_every": 0,
        "progress": "run",  # one bar over the run; the tree's denoising steps take a second
    },
}
"""The demo's settings (on top of the method preset); dotted overrides on the command line win."""

DEFAULT_MINUTES = 9.0
"""The demo's default wall-clock budget (the promise is 10 minutes on a 2-core CPU)."""

SUMMARY_MINUTES = 0.25
"""Kept back from ``--minutes`` for what follows training: before/after picture and report."""

MAX_ITERATIONS = 100_000
"""Upper bound on iterations when the budget decides (the lr schedule of the demo is constant)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="treegrpo demo",
        description="Train the shipped tiny shapes model with a GRPO-family preset on the CPU; "
        "print its held-out reward before and after.",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help=f"wall-clock budget of the whole command (default {DEFAULT_MINUTES:g})")
    length.add_argument("--iterations", type=int, help="train exactly this many iterations instead of a time budget")
    p.add_argument("--method", default="treegrpo", help="method preset (treegrpo, flow_grpo, dance_grpo, mix_grpo, branch_grpo, ddpo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", help="run folder (default: runs/demo-<time>)")
    p.add_argument("--eval-prompts", type=int, default=DEMO_CONFIG["data"]["num_eval_prompts"],
                   help="held-out samples of every evaluation (fixed prompts and noise)")
    p.add_argument("--eval-points", type=int, default=5,
                   help="evaluations during the budget, besides the base's (a time budget spaces them evenly)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 2,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 2)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's files in --output-dir")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also log every iteration and evaluation (default: one progress bar and the result line)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=1e-4")
    return p


def demo_config(args: argparse.Namespace, minutes_used: float = 0.0) -> Any:
    """The resolved TrainerConfig of a demo run (``minutes_used``: spent before training, out of ``--minutes``)."""
    from treegrpo.config import check_method, resolve_config
    from treegrpo.errors import ConfigError

    check_method(args.method, "--method")
    if args.eval_prompts < 1:
        raise ConfigError(f"--eval-prompts must be >= 1, got {args.eval_prompts}")
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {args.minutes}")
    if args.eval_points < 1:
        raise ConfigError(f"--eval-points must be >= 1, got {args.eval_points}")
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"unexpected argument {item!r}; demo overrides look like dotted.key=value")
    output_dir = args.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.iterations is not None:
        length = [f"train.iterations={args.iterations}", f"train.eval_every={args.iterations // args.eval_points}"]
    else:
        budget = (args.minutes or DEFAULT_MINUTES) - minutes_used - SUMMARY_MINUTES
        if budget <= 0:
            raise ConfigError(f"--minutes {args.minutes} leaves no time to train; give it more minutes")
        length = [f"train.iterations={MAX_ITERATIONS}", f"train.max_minutes={budget:.4f}",
                  f"train.eval_every_minutes={budget / (args.eval_points + 3):.4f}"]  # room for the evaluations themselves
    overrides = [
        f"seed={args.seed}", f"output_dir={output_dir}", *length,
        f"data.num_eval_prompts={args.eval_prompts}", *args.overrides,
    ]
    return resolve_config(DEMO_CONFIG, overrides, source="demo settings", method=args.method)


BEFORE_AFTER_PAIRS = 24
"""Held-out prompts shown in before_after.png (the first ones of the fixed evaluation set)."""


def before_after_png(before: Path, after: Path, prompts: Sequence[str], shown_rewards: Sequence[str],
                     means: dict[str, tuple[float, float]], file: Path) -> None:
    """Base and trained samples of the first held-out prompts side by side, captioned, with each image's
    scores under ``shown_rewards`` (reward names) and the held-out means (name -> (base, trained)) in the title."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from treegrpo.rewards import get_reward
    from treegrpo.trainer.evaluation import grid_cells

    shown = min(BEFORE_AFTER_PAIRS, len(prompts))
    base, trained = grid_cells(before, shown, len(prompts)), grid_cells(after, shown, len(prompts))
    scorers = {name: get_reward(name) for name in shown_rewards}
    per_image = {name: (scorer(base, prompts[:shown]), scorer(trained, prompts[:shown])) for name, scorer in scorers.items()}
    columns = min(6, shown)
    rows = math.ceil(shown / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 1.9 * rows + 0.8), squeeze=False)
    framed = [torch.nn.functional.pad(images, (1, 1, 1, 1), value=0.6) for images in (base, trained)]  # white on white shows
    gap = torch.ones(3, framed[0].shape[2], 2)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= shown:
            continue
        pair = torch.cat([framed[0][i], gap, framed[1][i]], dim=2).permute(1, 2, 0).numpy()
        ax.imshow(pair, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(prompts[i], 26)), fontsize=7)
        scores = "\n".join(f"{name} {float(b[i]):.2f} -> {float(t[i]):.2f}" for name, (b, t) in per_image.items())
        ax.text(0.5, -0.04, scores, fontsize=6.5, ha="center", va="top", transform=ax.transAxes)
    held_out = ", ".join(f"{name} {b:.3f} -> {t:.3f}" for name, (b, t) in means.items())
    fig.suptitle(f"held-out over {len(prompts)} prompts: {held_out}\n"
                 f"first {shown} prompts, base (left) and trained (right), same noise", fontsize=9)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def reported_rewards(evaluation: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(trained rewards to report, judges) read from an evaluation record's keys.

    The trained rewards are those the run optimised that no judge re-scores (the preference of the
    default demo); when every trained reward is also a judge (``reward=shapes``), all of them, and
    those judges are not reported twice.
    """
    judges = sorted(k.removeprefix("eval/judge/") for k in evaluation
                    if k.startswith("eval/judge/") and not k.endswith("_se"))
    trained = [k.removeprefix("eval/") for k in evaluation if k.startswith("eval/") and not k.endswith("_se")
               and k.count("/") == 1 and k not in ("eval/score", "eval/judge_score")]
    reported = [name for name in trained if name not in judges] or trained
    return reported, [name for name in judges if name not in reported]


def _change(base: dict[str, Any], trained: dict[str, Any], key: str) -> str:
    """``0.612 +- 0.008 -> 0.700 +- 0.007 (+0.088)``: a held-out mean before and after, with standard errors."""
    return f"{_with_se(base, key)} -> {_with_se(trained, key)} ({trained[key] - base[key]:+.3f})"


def result_line(cfg: Any, base: dict[str, Any], trained: dict[str, Any], iterations: int, minutes: float) -> str:
    """The demo's one result line: each trained reward and each judge, base -> trained, at the run's steps and at
    ``eval.more_steps``, with standard errors."""
    rewards, judges = reported_rewards(base)
    n = cfg.data.num_eval_prompts

    def changes(prefix: str) -> str:
        parts = [f"{name} {_change(base, trained, prefix + name)}" for name in rewards if prefix + name in trained]
        parts += [f"judge {name} {_change(base, trained, prefix + 'judge/' + name)}" for name in judges
                  if prefix + "judge/" + name in trained]
        return ", ".join(parts)

    line = f"held-out ({n} samples, {cfg.sampling.steps} steps): {changes('eval/')}"
    more = f"eval/steps{cfg.eval.more_steps}/"
    if cfg.eval.more_steps and any(k.startswith(more) for k in base) and any(k.startswith(more) for k in trained):
        samples = min(cfg.eval.more_steps_samples or n, n)
        line += f"; with {cfg.eval.more_steps} steps ({samples} samples): {changes(more)}"
    return line + f"; {iterations} {cfg.method} iterations in {minutes:.1f} min"


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
    rewards, judges = reported_rewards(first)
    means = {name: (first[f"eval/{name}"], last[f"eval/{name}"]) for name in rewards}
    means.update({f"judge {name}": (first[f"eval/judge/{name}"], last[f"eval/judge/{name}"]) for name in judges})
    before_after_png(samples[0], samples[-1], eval_prompts, list(dict.fromkeys([*rewards, *judges])), means, before_after)
    curves, _ = make_report(run)
    return {"base": first, "trained": last, "before_after": before_after, "curves": curves,
            "tree": trees[-1] if trees else None}


def _with_se(evaluation: dict[str, Any], key: str) -> str:
    """``0.612 +- 0.008``: a held-out mean and its standard error."""
    return f"{evaluation[key]:.3f} +- {evaluation.get(key + '_se') or 0.0:.3f}"


def lora_snippet(run: Path) -> str:
    """The three lines of Python that load the run's LoRA onto the shipped base in plain diffusers."""
    from treegrpo.demo import BASE_DIR

    return (
        "from diffusers import StableDiffusion3Pipeline\n"
        f"pipe = StableDiffusion3Pipeline.from_pretrained({str(BASE_DIR)!r}, text_encoder_3=None, tokenizer_3=None)\n"
        f"pipe.load_lora_weights({str((run / 'final').resolve())!r})\n"
    )


def write_run_readme(run: Path, line: str, sampling: dict[str, Any]) -> Path:
    """RUN/README.md: the result line and how to sample the trained model."""
    call = ", ".join(f"{k}={v!r}" for k, v in sampling.items())
    text = (
        f"# treegrpo demo run\n\n{line}\n\nSample the trained model in plain diffusers:\n\n```python\n"
        f"{lora_snippet(run)}image = pipe(\"two red circles\", {call}).images[0]\n```\n"
    )
    file = run / "README.md"
    file.write_text(text, encoding="utf-8")
    return file


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``treegrpo demo`` (also ``python -m treegrpo.demo.run``)."""
    start = time.time()
    args = build_parser().parse_intermixed_args(argv)  # overrides may follow options
    import torch

    torch.set_num_threads(max(1, args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        logging.getLogger("treegrpo").setLevel(logging.WARNING)
    from treegrpo.data import load_prompt_sets
    from treegrpo.trainer import train

    cfg = demo_config(args, minutes_used=(time.time() - start) / 60)
    run = Path(cfg.output_dir)
    length = f"{cfg.train.iterations} iterations" if not cfg.train.max_minutes else f"{cfg.train.max_minutes:.1f} min"
    logger.info("demo: %s on the shipped shapes base, %s, %d held-out samples, %d threads -> %s",
                cfg.method, length, cfg.data.num_eval_prompts, torch.get_num_threads(), run)
    records = train(cfg, overwrite=args.overwrite)
    out = summarize(run, load_prompt_sets(cfg.data, cfg.seed).eval)
    minutes = (time.time() - start) / 60
    base, trained = out["base"], out["trained"]
    summary = {"method": cfg.method, "seed": cfg.seed, "iterations": len(records), "eval_prompts": cfg.data.num_eval_prompts,
               "base": base, "trained": trained, "minutes": minutes}
    (run / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    line = result_line(cfg, base, trained, len(records), minutes)
    sampling = {"num_inference_steps": cfg.sampling.steps, "guidance_scale": cfg.sampling.guidance_scale,
                "height": 32, "width": 32, "max_sequence_length": cfg.model.max_sequence_length}
    readme = write_run_readme(run, line, sampling)
    print(
        f"{line} | run {run} | before/after {out['before_after']} | reward curves {out['curves']} | "
        f"tree {out['tree']} | load the LoRA in diffusers: {readme}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    import sys

    logging.basicConfig(format="%(message)s")
    logging.getLogger("treegrpo").setLevel(logging.INFO)
    sys.exit(main())
