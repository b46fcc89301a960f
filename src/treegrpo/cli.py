"""The ``treegrpo`` command line.

    treegrpo train CONFIG.yaml [dotted.key=value ...] [--output-dir RUN] [--resume RUN|auto] [--overwrite]
    treegrpo sample --model PATH [--trained DIR] --prompt TEXT ... [--noise-level 0.7] --out grid.png
    treegrpo eval CONFIG.yaml [dotted.key=value ...] [--trained DIR] [--out results.json]
    treegrpo report RUN
    treegrpo config --show-defaults [--method NAME]
    treegrpo toy [--method NAME] [--iterations N] [--lr LR] [--seed S]
    treegrpo demo ...

Multi-process: ``accelerate launch --config_file configs/accelerate/8gpu_ddp.yaml -m treegrpo train ...``.
Bad input prints one line on stderr naming the problem and the fix, and exits with code 2.
SIGTERM / Ctrl-C during ``train`` save a checkpoint and exit with 128 + the signal number (143 / 130);
a run stopped by repeated NaN / inf values exits with code 1; both print one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from treegrpo.config import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class CliError(ConfigError):
    """Bad command-line input (one line, exit code 2)."""


# ----------------------------------------------------------------------------- helpers


def split_config_and_overrides(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``[CONFIG.yaml, a.b=1, ...]`` -> (config path or None, overrides)."""
    paths = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(paths) > 1:
        raise CliError(f"expected one config file, got {paths}; write overrides as dotted.key=value")
    return (paths[0] if paths else None), overrides


def _setup_logging() -> None:
    """treegrpo's INFO lines on stderr (warnings only on non-main processes)."""
    import os

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("treegrpo").setLevel(logging.INFO if rank == 0 else logging.WARNING)


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    """Resolve the config (or the resumed run's) and train."""
    from treegrpo.config import load_config
    from treegrpo.trainer import train

    path, overrides = split_config_and_overrides(args.items)
    if path is None and args.resume not in (None, "auto"):
        path = str(Path(args.resume) / "config.yaml")
    if path is None:
        raise CliError("no config given; run `treegrpo train CONFIG.yaml [key=value ...]` (see configs/)")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume not in (None, "auto"):
        overrides.append(f"output_dir={args.resume}")
    cfg = load_config(path, overrides)
    train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the defaults (with a method preset applied)."""
    from treegrpo.config import check_method, show_defaults

    if not args.show_defaults:
        raise CliError("nothing to do; run `treegrpo config --show-defaults [--method NAME]`")
    if args.method is not None:
        check_method(args.method, "--method")
    print(show_defaults(args.method), end="")
    return 0


def load_for_inference(model: Any, trained: Optional[str]) -> Any:
    """A backbone without a fresh adapter, plus the trained LoRA / weights from ``trained``."""
    from dataclasses import replace

    from treegrpo.models.loading import load_backbone, resolve_model_path

    backbone = load_backbone(replace(model, path=resolve_model_path(model.path)), trainable=False)
    if trained is not None:
        apply_trained(backbone, Path(trained))
    backbone.denoiser.requires_grad_(False)
    return backbone


def apply_trained(backbone: Any, folder: Path) -> None:
    """Load a LoRA folder (diffusers format) or a full-weights export into the backbone."""
    from safetensors.torch import load_file

    if (folder / "pytorch_lora_weights.safetensors").is_file():
        backbone.pipe.load_lora_weights(str(folder))
        return
    weights = sorted((folder / getattr(backbone, "denoiser_name", "transformer")).glob("*.safetensors"))
    if not weights:
        raise CliError(f"{folder} holds neither pytorch_lora_weights.safetensors nor exported denoiser weights; pass RUN/final")
    state: dict[str, Any] = {}
    for file in weights:
        state.update(load_file(str(file)))
    backbone.denoiser.load_state_dict(state)


def _model_config(args: argparse.Namespace) -> Any:
    from treegrpo.models.config import ModelConfig

    return ModelConfig(
        path=args.model, dtype=args.dtype, device=args.device, height=args.height, width=args.width,
        local_files_only=args.local_files_only, max_sequence_length=args.max_sequence_length,
    )


def _prompt_list(args: argparse.Namespace) -> list[str]:
    from treegrpo.data import load_prompts

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += load_prompts(args.prompts)
    if not prompts:
        raise CliError("no prompts; pass --prompt TEXT (repeatable) or --prompts FILE")
    return [p for p in prompts for _ in range(args.per_prompt)]


def cmd_sample(args: argparse.Namespace) -> int:
    """Images from a base model (plus trained weights) as a PNG grid."""
    import math

    from treegrpo.trainer.evaluation import image_grid, sample_images, save_png

    prompts = _prompt_list(args)
    backbone = load_for_inference(_model_config(args), args.trained)
    images = sample_images(backbone, prompts, steps=args.steps, guidance_scale=args.guidance_scale,
                           noise_level=args.noise_level, seed=args.seed, max_batch=64)
    save_png(image_grid(images, args.columns or math.ceil(math.sqrt(len(prompts)))), Path(args.out))
    print(f"wrote {args.out} ({len(prompts)} images)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Held-out prompts through the configured rewards; JSON to stdout (and --out)."""
    from treegrpo.config import load_config
    from treegrpo.data import load_prompt_sets
    from treegrpo.trainer.evaluation import evaluate
    from treegrpo.trainer.setup import build_rewards

    path, overrides = split_config_and_overrides(args.items)
    if path is None:
        raise CliError("no config given; run `treegrpo eval CONFIG.yaml [key=value ...] [--trained RUN/final]`")
    cfg = load_config(path, overrides)
    prompts = load_prompt_sets(cfg.data, cfg.seed).eval
    backbone = load_for_inference(cfg.model, args.trained)
    rewards = build_rewards(cfg.reward, backbone.device if hasattr(backbone, "device") else "cpu")
    result, _ = evaluate(backbone, rewards, prompts, steps=cfg.sampling.steps, guidance_scale=cfg.sampling.guidance_scale,
                         seed=cfg.data.eval_seed, max_batch=cfg.sampling.max_batch)
    output = {"model": cfg.model.path, "trained": args.trained, "prompts": len(prompts), **result}
    text = json.dumps(output, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Curves PNG and HTML page of a run."""
    from treegrpo.report import make_report

    if not Path(args.run).is_dir():
        raise CliError(f"{args.run} is not a run folder; pass the output_dir of a training run")
    png, page = make_report(args.run)
    print(f"wrote {png} and {page}")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    """The 2-D toy task for one preset: reward before and after."""
    from treegrpo.config import check_method
    from treegrpo.toy import ToyRunConfig, train_toy

    check_method(args.method, "--method")
    history = train_toy(ToyRunConfig(method=args.method, iterations=args.iterations, lr=args.lr, seed=args.seed))
    rewards = history["reward"]
    nfe = sum(history["rollout_nfe"]) + sum(history["training_nfe"])
    print(f"{args.method}: reward {rewards[0]:.4f} -> {rewards[-1]:.4f} after {args.iterations} iterations ({nfe:.0f} NFE)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Hand over to the demo's own entry point (``treegrpo.demo.run:main``)."""
    try:
        from treegrpo.demo.run import main as demo_main  # type: ignore[import-not-found]
    except ImportError as error:
        raise CliError(f"the demo entry point treegrpo.demo.run is not available ({error}); update treegrpo") from None
    result = demo_main(list(args.rest))
    return int(result or 0)


# ----------------------------------------------------------------------------- parser


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model with a GRPO-family method", description="Train (RL post-training).")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="a YAML config, then dotted overrides such as tree.k=4 train.lr=1e-5")
    p.add_argument("--output-dir", help="run folder (overrides output_dir)")
    p.add_argument("--resume", metavar="RUN|auto", help="continue RUN (or output_dir with 'auto') from its newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace another run's files in the output folder")
    p.set_defaults(func=cmd_train)


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="draw images from a model (+ trained weights) into a PNG grid")
    p.add_argument("--model", required=True, help="pipeline folder, hub id or builtin:shapes")
    p.add_argument("--trained", help="a LoRA folder or RUN/final")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a .txt/.jsonl file of prompts")
    p.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance-scale", type=float, default=4.5)
    p.add_argument("--noise-level", type=float, default=0.0, help="0 = ODE sampling, > 0 = SDE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", default="bf16", help="fp32, bf16 or fp16")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-sequence-length", type=int, default=256)
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--columns", type=int, help="grid columns (default: square)")
    p.add_argument("--out", default="samples.png", help="PNG file to write")
    p.set_defaults(func=cmd_sample)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="score held-out prompts with the configured rewards (JSON)")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    p.add_argument("--trained", help="a LoRA folder or RUN/final (default: the base model)")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=cmd_eval)


def _add_misc(sub: Any) -> None:
    p = sub.add_parser("report", help="PNG + HTML report of a run (curves, tree picture, before/after)")
    p.add_argument("run", help="a run folder")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("config", help="print the default config (--show-defaults [--method NAME])")
    p.add_argument("--show-defaults", action="store_true", help="print every key with its default")
    p.add_argument("--method", help="apply this method preset first")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("toy", help="train a preset on the 2-D toy task and print the reward before/after")
    p.add_argument("--method", default="treegrpo")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_toy)
    p = sub.add_parser("demo", help="the built-in shapes demo (treegrpo.demo.run)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _stopped(command: str, error: RuntimeError) -> int:
    """A training run that stopped on purpose: one line on stderr and its exit code; re-raises anything else."""
    from treegrpo.guards import NonFiniteError
    from treegrpo.trainer import TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        sys.stderr.write(f"treegrpo {command}: {error}\n")
        return 128 + error.signum
    if isinstance(error, NonFiniteError):
        sys.stderr.write(f"treegrpo {command}: error: {error}\n")
        return EXIT_FAILED
    raise error


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every subcommand)."""
    parser = _Parser(prog="treegrpo", description="RL post-training (TreeGRPO, GRPO family) of diffusers image generators.")
    from treegrpo import __version__

    parser.add_argument("--version", action="version", version=f"treegrpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_misc(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run a subcommand; bad input -> one line on stderr, exit code 2."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["demo"]:  # everything after "demo" is the demo's own (argparse.REMAINDER drops leading --options)
        args = argparse.Namespace(command="demo", func=cmd_demo, rest=words[1:])
    else:
        args = parser.parse_args(words)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    _setup_logging()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RuntimeError as error:
        return _stopped(args.command, error)
    except KeyboardInterrupt:
        sys.stderr.write(f"treegrpo {args.command}: interrupted before training started; nothing was saved\n")
        return 128 + 2
    except (ConfigError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        sys.stderr.write(f"treegrpo {args.command}: error: {message}\n")
        return EXIT_BAD_INPUT
