"""The ``treegrpo`` command line.

    treegrpo train [CONFIG.yaml] [dotted.key=value ...] [--output-dir RUN] [--resume RUN|auto] [--overwrite]
    treegrpo sample (--model PATH | --run RUN) [--trained DIR] --prompt TEXT ... [--prompts FILE --prompt-field F] --out grid.png
    treegrpo eval [CONFIG.yaml] [dotted.key=value ...] [--trained DIR] [--prompts builtin:NAME] [--rewards A,B]
                  [--num-prompts N] [--per-prompt [K]] [--out results.json]
    treegrpo report RUN
    treegrpo push RUN --repo ID [--private]
    treegrpo config --show-defaults [--method NAME]
    treegrpo toy [--method NAME] [--iterations N] [--lr LR] [--seed S]
    treegrpo demo ...

``key=value`` overrides go anywhere on the line (before or after options); without a YAML file the
schema defaults plus the overrides make the config. ``--verbose`` (anywhere) shows library warnings
and loading bars, which are silenced otherwise.

Multi-process: ``accelerate launch --config_file configs/accelerate/8gpu_ddp.yaml -m treegrpo train ...``.
Bad input prints one line on stderr naming the problem and the fix, and exits with code 2.
SIGTERM / Ctrl-C during ``train`` save a checkpoint, print the command that resumes the run and exit
with 128 + the signal number (143 / 130); a run stopped by repeated NaN / inf values exits with code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from treegrpo.errors import ConfigError

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
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("treegrpo").setLevel(logging.INFO if rank == 0 else logging.WARNING)


LIBRARIES: tuple[str, ...] = ("transformers", "diffusers", "huggingface_hub", "peft", "accelerate", "torch", "wandb")
"""Libraries whose warnings and progress bars are silenced unless ``--verbose``."""


def quiet_libraries(verbose: bool, loads_models: bool) -> None:
    """Silence library warnings and loading bars (unless ``verbose``); treegrpo's own lines stay.

    Environment variables cover libraries imported later; with ``loads_models`` transformers and
    diffusers are imported and told directly (they may already be imported, e.g. in tests).
    """
    if verbose:
        return
    for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                            ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                            ("WANDB_SILENT", "true")):
        os.environ.setdefault(variable, value)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module="treegrpo")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if loads_models:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging
        from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        disable_progress_bars()


# ----------------------------------------------------------------------------- commands


def _config_path(path: Optional[str], resume: Optional[str], output_dir: Optional[str]) -> Optional[str]:
    """The YAML to read: the one given, else the resumed run's own RUN/config.yaml (when there is one)."""
    if path is not None:
        return path
    if resume not in (None, "auto"):
        return str(Path(resume) / "config.yaml")
    if resume == "auto" and output_dir and (Path(output_dir) / "config.yaml").is_file():
        return str(Path(output_dir) / "config.yaml")
    return None


def cmd_train(args: argparse.Namespace) -> int:
    """Resolve the config (a YAML, the resumed run's, or only defaults + overrides) and train."""
    from treegrpo.config import load_config
    from treegrpo.trainer import train

    path, overrides = split_config_and_overrides(args.items)
    path = _config_path(path, args.resume, args.output_dir)
    if path is None and not overrides:
        raise CliError("no config given; pass CONFIG.yaml and/or key=value overrides, e.g. `treegrpo train "
                       "model.path=builtin:shapes data.builtin=shapes reward=shapes` (see configs/)")
    if args.resume not in (None, "auto") and not Path(path or "").is_file():
        raise CliError(f"{args.resume} holds no config.yaml; pass the folder of a treegrpo run to --resume")
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


def _lora_layers(module: Any) -> int:
    """Layers of ``module`` that carry a LoRA adapter (peft's ``lora_A`` holds one entry per adapter)."""
    return sum(len(getattr(layer, "lora_A", {})) for layer in module.modules())


def _trained_on(folder: Path) -> str:
    """The base model a trained folder (``RUN/final``) came from, read from its run's config.yaml."""
    config = folder.parent / "config.yaml"
    if config.is_file():
        for line in config.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("path:"):
                return line.split(":", 1)[1].strip()
    return "another model (its run's config.yaml is not beside it)"


def apply_trained(backbone: Any, folder: Path) -> None:
    """Load a LoRA folder (diffusers format) or a full-weights export into the backbone.

    A LoRA that matches no layer of the loaded model (trained on another family) is a one-line error:
    diffusers would otherwise load nothing and sample the untrained base.
    """
    from safetensors.torch import load_file

    if (folder / "pytorch_lora_weights.safetensors").is_file():
        before = _lora_layers(backbone.denoiser)
        model = f"this {backbone.family} model ({type(backbone.pipe).__name__})"
        fix = f"it was trained on {_trained_on(folder)}: sample it with that model (--model or model.path)"
        try:
            backbone.pipe.load_lora_weights(str(folder))
        except (RuntimeError, ValueError) as error:  # same layer names, other shapes: another model's LoRA
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CliError(f"the LoRA in {folder} does not fit {model} ({first}); {fix}") from None
        if _lora_layers(backbone.denoiser) == before:
            raise CliError(f"the LoRA in {folder} matches no layer of {model}; {fix}")
        return
    weights = sorted((folder / getattr(backbone, "denoiser_name", "transformer")).glob("*.safetensors"))
    if not weights:
        raise CliError(f"{folder} holds neither pytorch_lora_weights.safetensors nor exported denoiser weights; pass RUN/final")
    state: dict[str, Any] = {}
    for file in weights:
        state.update(load_file(str(file)))
    backbone.denoiser.load_state_dict(state)


SAMPLE_DEFAULTS: dict[str, Any] = {"steps": 10, "guidance_scale": 4.5, "dtype": "bf16", "max_sequence_length": 256}
"""``treegrpo sample`` settings when neither the flag nor ``--run`` gives them."""


def _sample_settings(args: argparse.Namespace) -> tuple[Any, Optional[str], int, float]:
    """(model config, trained folder, steps, guidance): from the flags, else from ``--run RUN``'s config, else defaults."""
    from dataclasses import replace

    from treegrpo.config import load_config
    from treegrpo.models.config import ModelConfig

    flags = {key: getattr(args, key) for key in SAMPLE_DEFAULTS}
    if args.run is None:
        if args.model is None:
            raise CliError("no model; pass --model PATH (pipeline folder, hub id or builtin:shapes) or --run RUN")
        values = {key: SAMPLE_DEFAULTS[key] if value is None else value for key, value in flags.items()}
        model = ModelConfig(path=args.model, dtype=values["dtype"], device=args.device, height=args.height, width=args.width,
                            local_files_only=args.local_files_only, max_sequence_length=values["max_sequence_length"])
        return model, args.trained, values["steps"], values["guidance_scale"]
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise CliError(f"{run} holds no config.yaml; pass the folder of a treegrpo training run to --run")
    cfg = load_config(run / "config.yaml")
    trained = args.trained or str(run / "final")
    if not Path(trained).is_dir():
        raise CliError(f"{trained} does not exist: the run has not exported its weights; finish it with "
                       f"`treegrpo train --resume {run}` or pass --trained")
    changes = {key: value for key, value in (("path", args.model), ("dtype", args.dtype), ("height", args.height),
                                             ("width", args.width), ("max_sequence_length", args.max_sequence_length))
               if value is not None}
    model = replace(cfg.model, device=args.device, local_files_only=args.local_files_only or cfg.model.local_files_only,
                    **changes)
    steps = cfg.sampling.steps if args.steps is None else args.steps
    guidance = cfg.sampling.guidance_scale if args.guidance_scale is None else args.guidance_scale
    return model, trained, steps, guidance


def _prompt_list(args: argparse.Namespace) -> list[str]:
    from treegrpo.data import load_prompts

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += load_prompts(args.prompts, field=args.prompt_field, field_key="--prompt-field")
    if not prompts:
        raise CliError("no prompts; pass --prompt TEXT (repeatable) or --prompts FILE")
    return [p for p in prompts for _ in range(args.per_prompt)]


def cmd_sample(args: argparse.Namespace) -> int:
    """Images from a base model (plus trained weights, or a run's) as a PNG grid and a captioned copy."""
    import math

    import torch

    from treegrpo.rewards.video import is_video, middle_frames
    from treegrpo.trainer.evaluation import image_grid, sample_images, save_png
    from treegrpo.trainer.pictures import captioned_name, save_captioned
    from treegrpo.video_io import save_video

    prompts = _prompt_list(args)
    model, trained, steps, guidance = _sample_settings(args)
    backbone = load_for_inference(model, trained)
    images = sample_images(backbone, prompts, steps=steps, guidance_scale=guidance,
                           noise_level=args.noise_level, seed=args.seed, max_batch=64)
    columns = args.columns or math.ceil(math.sqrt(len(prompts)))
    out = Path(args.out)
    frames = middle_frames(images)  # clips: the PNGs show each clip's middle frame, the video all of them
    save_png(image_grid(frames, columns), out)
    captioned = save_captioned(frames, prompts, captioned_name(out), columns)
    written = [str(out), str(captioned)]
    if is_video(images):
        clip = torch.stack([image_grid(images[:, f], columns) for f in range(images.shape[1])])
        written.append(str(save_video(clip, out.with_suffix(""))))
    print(f"wrote {', '.join(written)} ({len(prompts)} {'clips' if is_video(images) else 'images'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """The evaluation table: base (and trained) model, one column per reward; Markdown printed, JSON + Markdown
    written (``treegrpo.eval_table``)."""
    from treegrpo.eval_table import EvalRequest, run

    path, overrides = split_config_and_overrides(args.items)
    if path is None and not overrides:
        raise CliError("no config given; run `treegrpo eval [CONFIG.yaml] [key=value ...] [--trained RUN/final] "
                       "[--prompts builtin:drawbench] [--rewards hpsv2,pickscore]`")
    request = EvalRequest(path, overrides, trained=args.trained, prompts=args.prompts, num_prompts=args.num_prompts,
                          rewards=args.rewards, per_prompt=args.per_prompt, out=args.out)
    print(run(request), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Curves PNG and HTML page of a run."""
    from treegrpo.report import make_report

    if not Path(args.run).is_dir():
        raise CliError(f"{args.run} is not a run folder; pass the output_dir of a training run")
    png, page = make_report(args.run)
    print(f"wrote {png} and {page}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload RUN/final (weights + model card) to a Hugging Face Hub repo."""
    from treegrpo.hub import push

    run = Path(args.run)
    if not run.is_dir():
        raise CliError(f"{run} is not a run folder; pass the output_dir of a training run")
    url = push(run, args.repo, private=args.private)
    print(f"uploaded {run / 'final'} to {url}")
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


def _asks_verbose(words: Sequence[str]) -> bool:
    """Whether the demo's own words hold ``--verbose`` / ``-v``."""
    return any(word in ("--verbose", "-v") for word in words)


def cmd_demo(args: argparse.Namespace) -> int:
    """Hand over to the demo's own entry point (``treegrpo.demo.run:main``)."""
    try:
        from treegrpo.demo.run import main as demo_main  # type: ignore[import-not-found]
    except ImportError as error:
        raise CliError(f"the demo entry point treegrpo.demo.run is not available ({error}); update treegrpo") from None
    passed_on = args.verbose and not _asks_verbose(args.rest)  # `treegrpo --verbose demo`
    result = demo_main(list(args.rest) + (["--verbose"] if passed_on else []))
    return int(result or 0)


# ----------------------------------------------------------------------------- parser


def _add_verbose(p: argparse.ArgumentParser) -> None:
    """``--verbose`` after the command too (it is global; SUPPRESS keeps the top-level value)."""
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="show library warnings and loading bars")


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model with a GRPO-family method", description="Train (RL post-training).")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="an optional YAML config and dotted overrides such as tree.k=4 train.lr=1e-5, anywhere on the line")
    p.add_argument("--output-dir", help="run folder (overrides output_dir)")
    p.add_argument("--resume", metavar="RUN|auto",
                   help="continue RUN (its config.yaml) from its newest complete checkpoint; 'auto': output_dir's, "
                        "or a new run when it has none")
    p.add_argument("--overwrite", action="store_true", help="replace another run's files in the output folder")
    _add_verbose(p)
    p.set_defaults(func=cmd_train)


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="draw images from a model (+ trained weights) into a PNG grid (+ a captioned one)")
    p.add_argument("--model", help="pipeline folder, hub id or builtin:shapes (or take a run's with --run)")
    p.add_argument("--run", help="a run folder: its model, size, steps and guidance, and its RUN/final weights")
    p.add_argument("--trained", help="a LoRA folder or RUN/final")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a .txt/.jsonl file of prompts, or a built-in set (builtin:drawbench)")
    p.add_argument("--prompt-field", default="prompt", help="the field of a .jsonl record that holds the prompt")
    p.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    p.add_argument("--steps", type=int, help=f"default: the run's, else {SAMPLE_DEFAULTS['steps']}")
    p.add_argument("--guidance-scale", type=float, help=f"default: the run's, else {SAMPLE_DEFAULTS['guidance_scale']}")
    p.add_argument("--noise-level", type=float, default=0.0, help="0 = ODE sampling, > 0 = SDE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", help=f"fp32, bf16 or fp16 (default: the run's, else {SAMPLE_DEFAULTS['dtype']})")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-sequence-length", type=int)
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--columns", type=int, help="grid columns (default: square)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (and OUT-captioned.png beside it)")
    _add_verbose(p)
    p.set_defaults(func=cmd_sample)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="the evaluation table: base and trained model, mean ± standard error per reward",
                       description="Sample one image per prompt with the base model (and the trained one) and score "
                       "it with every reward; print a Markdown table, write it as JSON and Markdown.")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    p.add_argument("--trained", help="a LoRA folder or RUN/final: adds its row and the paired difference")
    p.add_argument("--prompts", metavar="SOURCE",
                   help="builtin:NAME (drawbench, geneval, ocr, pickscore, hpdv2[/style]), a .txt/.jsonl file or a "
                        "dataset (default: the config's held-out prompts)")
    p.add_argument("--num-prompts", type=int, metavar="N", help="only the first N prompts")
    p.add_argument("--rewards", metavar="A,B,...", help="reward names, one column each (default: the config's "
                   "reward and eval.rewards); options come from the config's entry of the same name")
    p.add_argument("--per-prompt", type=int, nargs="?", const=10, metavar="K",
                   help="also list each reward's K lowest scoring prompts (default K: 10)")
    p.add_argument("--out", help="JSON + Markdown here (OUT.json, OUT.md, or a folder); default: the run folder of "
                   "--trained RUN/final")
    _add_verbose(p)
    p.set_defaults(func=cmd_eval)


def _add_misc(sub: Any) -> None:
    p = sub.add_parser("report", help="PNG + HTML report of a run (curves, tree picture, before/after)")
    p.add_argument("run", help="a run folder")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("push", help="upload RUN/final (weights + model card) to the Hugging Face Hub")
    p.add_argument("run", help="a run folder")
    p.add_argument("--repo", required=True, help="the Hub repo id, e.g. your-name/sd35m-treegrpo-hps")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    _add_verbose(p)
    p.set_defaults(func=cmd_push)
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
    from treegrpo.runtime.guards import NonFiniteError, RewardUnavailable
    from treegrpo.trainer import TrainingInterrupted
    from treegrpo.trainer.distributed import PeerLost

    if isinstance(error, TrainingInterrupted):
        if int(os.environ.get("RANK", "0")) == 0:  # one line for a multi-process run, not one per process
            sys.stderr.write(f"treegrpo {command}: {error}\n")
        return 128 + error.signum
    if isinstance(error, PeerLost):  # every survivor says which process it lost
        sys.stderr.write(f"treegrpo {command}: error: {error}\n")
        return EXIT_FAILED
    if isinstance(error, RewardUnavailable):
        if int(os.environ.get("RANK", "0")) == 0:
            sys.stderr.write(f"treegrpo {command}: error: {error}\n")
        return EXIT_FAILED
    if isinstance(error, NonFiniteError):
        sys.stderr.write(f"treegrpo {command}: error: {error}\n")
        return EXIT_FAILED
    raise error


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every subcommand)."""
    parser = _Parser(prog="treegrpo", description="RL post-training (TreeGRPO, GRPO family) of diffusers image generators.")
    from treegrpo import __version__

    parser.add_argument("--version", action="version", version=f"treegrpo {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="show library warnings and loading bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_misc(sub)
    return parser


MODEL_COMMANDS: tuple[str, ...] = ("train", "sample", "eval", "demo")
"""Commands that load diffusers pipelines (their libraries are silenced directly, not only by environment)."""


def parse_words(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides (and the config file) may come after options too.

    argparse gives a ``nargs="*"`` positional only the words before the first option; the rest come
    back unrecognised and join ``items`` here. Unknown options stay errors.
    """
    args, extra = parser.parse_known_args(words)
    if extra and hasattr(args, "items"):
        args.items = list(args.items) + [word for word in extra if not word.startswith("-")]
        extra = [word for word in extra if word.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run a subcommand; bad input -> one line on stderr, exit code 2."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    verbose = words[:1] in (["--verbose"], ["-v"])
    if verbose:
        words = words[1:]
    if words[:1] == ["demo"]:  # everything after "demo" is the demo's own (argparse.REMAINDER drops leading --options)
        verbose = verbose or _asks_verbose(words[1:])
        args = argparse.Namespace(command="demo", func=cmd_demo, rest=words[1:], verbose=verbose)
    else:
        args = parse_words(parser, words)
        args.verbose = verbose or bool(getattr(args, "verbose", False))
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    _setup_logging()
    quiet_libraries(args.verbose, loads_models=args.command in MODEL_COMMANDS)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, FileNotFoundError) as error:  # first: a server's 4xx is both bad settings and a RuntimeError
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        sys.stderr.write(f"treegrpo {args.command}: error: {message}\n")
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        return _stopped(args.command, error)
    except KeyboardInterrupt:
        sys.stderr.write(f"treegrpo {args.command}: interrupted before training started; nothing was saved\n")
        return 128 + 2
