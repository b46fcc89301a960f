"""``treegrpo eval``: the papers' evaluation table. The base model (and the trained one, with
``--trained``) samples one prompt set with the evaluation's fixed noise; every reward scores every
image; the table has one row per model (and the paired difference) and one column per reward,
mean +- standard error over the prompts, printed as Markdown and written as JSON + Markdown.

Base and trained model draw the same noise for each prompt, so their difference is paired: its
standard error (over prompts) is smaller than either row's. ``--per-prompt K`` lists the K lowest
scoring prompts of each reward. Prompts are sampled and scored in chunks of :data:`CHUNK`
(chunk ``i`` draws its noise from ``trainer.evaluation.evaluation_noise_seed(data.eval_seed, i)``:
the first chunk is the noise of the trainer's held-out evaluation), so a set of any size fits in memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from treegrpo.config import TrainerConfig, reward_weights
from treegrpo.errors import ConfigError, did_you_mean
from treegrpo.prompts import prompt_metadata

CHUNK = 64
"""Prompts sampled and scored at once."""
DIFFERENCE = "trained - base"
"""The paired difference row's name."""
GROUP_FIELDS = ("category", "tag", "style")
"""Metadata fields shown beside a prompt in the worst-prompt lists (DrawBench, GenEval, HPDv2)."""


@dataclass
class EvalRequest:
    """What ``treegrpo eval`` was asked (the command line, parsed)."""

    config: Optional[str]
    overrides: list[str]
    trained: Optional[str] = None
    prompts: Optional[str] = None
    num_prompts: Optional[int] = None
    rewards: Optional[str] = None
    per_prompt: Optional[int] = None
    out: Optional[str] = None


@dataclass
class EvalResult:
    """Every image's score per reward column, by model (``base``, ``trained``), and what produced them."""

    prompts: list[str]
    source: str
    columns: list[str]
    scores: dict[str, dict[str, torch.Tensor]]
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- checks before anything loads


def reward_names(text: str) -> list[str]:
    """``--rewards a,b,c`` as names; an unknown one is a one-line ConfigError naming the registry's rewards."""
    from treegrpo.rewards import available_rewards, is_import_path

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--rewards names no reward; give names separated by commas, e.g. --rewards hpsv2,pickscore")
    known = available_rewards()
    for name in names:
        if name not in known and not is_import_path(name):
            raise ConfigError(f"--rewards: unknown reward {name!r}{did_you_mean(name, known)} (available: "
                              f"{', '.join(known)}, or an import path 'package.module:function_or_class')")
    if len(set(names)) != len(names):
        raise ConfigError(f"--rewards names a reward twice ({text}); name each once")
    return names


def reward_columns(cfg: TrainerConfig, names: Optional[list[str]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{column label: (reward name, options)}``: the ``--rewards`` names (their options taken from the config's
    ``eval.rewards`` or ``reward`` entry of that name), else the config's ``reward`` and ``eval.rewards``.
    A reward's ``name`` option (a remote reward's) labels its column."""
    configured: dict[str, dict[str, Any]] = {}
    for spec, key in ((cfg.reward, "reward"), (cfg.eval.rewards, "eval.rewards")):
        if spec is not None:
            configured.update({name: options for name, (_, options) in reward_weights(spec, key).items()})
    chosen = names if names is not None else list(configured)
    columns: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in chosen:
        options = dict(configured.get(name, {}))
        columns[str(options.get("name") or name)] = (name, options)
    return columns


def output_paths(out: Optional[str], trained: Optional[str], source: str) -> Optional[tuple[Path, Path]]:
    """Where the JSON and the Markdown go: ``--out`` (a folder, or a file whose suffix is replaced), else the run
    folder of ``--trained RUN/final``; ``None`` when neither (the table is only printed)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.removeprefix("builtin:")).strip("-") or "prompts"
    if out is not None:
        path = Path(out).expanduser()
        if path.is_dir() or out.endswith("/"):
            return path / f"eval-{slug}.json", path / f"eval-{slug}.md"
        return path.with_suffix(".json"), path.with_suffix(".md")
    if trained is not None and (Path(trained).parent / "config.yaml").is_file():
        run = Path(trained).parent
        return run / f"eval-{slug}.json", run / f"eval-{slug}.md"
    return None


def eval_config(request: EvalRequest) -> TrainerConfig:
    """The resolved config; with ``--prompts`` the data section's sources are replaced by those prompts (so a
    config without any, or with the shapes generator, still evaluates a prompt set)."""
    from treegrpo.config import DataConfig, load_yaml, resolve_config, validate, with_reward_files
    from treegrpo.prompt_sets import is_builtin

    values = load_yaml(request.config) if request.config is not None else {}
    cfg = resolve_config(values, request.overrides, source=request.config or "defaults", check=False)
    if request.prompts is not None:
        data = replace(cfg.data, prompts=request.prompts, eval_prompts=None, builtin=None, heldout=0,
                       prompts_per_iteration=1)
        if is_builtin(request.prompts):  # a training config's prompt_field is for its own files
            data = replace(data, prompt_field=DataConfig.prompt_field)
        cfg = replace(cfg, data=data)
    validate(cfg)
    if request.config is not None:
        cfg = with_reward_files(cfg, [Path(request.config).expanduser().resolve().parent])
    return cfg


def check_request(request: EvalRequest) -> None:
    """The options that need no model: counts, the trained folder."""
    for flag, value in (("--num-prompts", request.num_prompts), ("--per-prompt", request.per_prompt)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if request.trained is not None and not Path(request.trained).is_dir():
        raise ConfigError(f"--trained {request.trained} is not a folder; pass a LoRA folder or RUN/final")


# ----------------------------------------------------------------------------- sampling and scoring


def score_prompts(backbone: Any, rewards: Any, prompts: Sequence[str], cfg: TrainerConfig) -> dict[str, torch.Tensor]:
    """Each reward's score of one image per prompt (ODE, the evaluation's fixed noise), in chunks of :data:`CHUNK`."""
    from treegrpo.trainer.evaluation import evaluation_noise_seed, sample_images

    parts: dict[str, list[torch.Tensor]] = {}
    for index, start in enumerate(range(0, len(prompts), CHUNK)):
        chunk = list(prompts[start : start + CHUNK])
        images = sample_images(backbone, chunk, steps=cfg.sampling.steps, guidance_scale=cfg.sampling.guidance_scale,
                               seed=evaluation_noise_seed(cfg.data.eval_seed, index), max_batch=cfg.sampling.max_batch)
        _, components = rewards(images, chunk)
        for name, values in components.items():
            parts.setdefault(name, []).append(values.float().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def evaluate_models(request: EvalRequest) -> EvalResult:
    """Check the request (bad input fails before any model loads), load the prompts, the rewards and the model;
    score the base model, then (``--trained``) the trained one."""
    from treegrpo.cli import apply_trained, load_for_inference
    from treegrpo.data import load_prompt_sets, load_prompts
    from treegrpo.runtime.placement import resolve_device
    from treegrpo.trainer.setup import build_rewards

    check_request(request)
    names = reward_names(request.rewards) if request.rewards is not None else None
    cfg = eval_config(request)
    columns = reward_columns(cfg, names)
    if request.prompts is not None:
        prompts = load_prompts(request.prompts, field=cfg.data.prompt_field, split=cfg.data.eval_dataset_split,
                               image_field=cfg.data.image_field)
        source = request.prompts
    else:
        prompts = load_prompt_sets(cfg.data, cfg.seed).eval
        source = cfg.data.eval_prompts or (f"shapes ({cfg.data.builtin})" if cfg.data.builtin else "held-out")
    prompts = prompts[: request.num_prompts] if request.num_prompts else prompts
    if not prompts:
        raise ConfigError("no prompts to evaluate; set data.num_eval_prompts >= 1 or pass --prompts")
    spec = {name: {"weight": 1.0, **options} for name, options in columns.values()}
    rewards = build_rewards(spec, resolve_device(cfg.model.device))
    labels = {name: label for label, (name, _) in columns.items()}
    backbone = load_for_inference(cfg.model, None)
    scores = {"base": score_prompts(backbone, rewards, prompts, cfg)}
    if request.trained is not None:
        apply_trained(backbone, Path(request.trained))
        backbone.denoiser.requires_grad_(False)
        scores["trained"] = score_prompts(backbone, rewards, prompts, cfg)
    relabelled = {row: {labels[name]: values for name, values in by_name.items()} for row, by_name in scores.items()}
    settings = {"model": cfg.model.path, "trained": request.trained, "steps": cfg.sampling.steps,
                "guidance_scale": cfg.sampling.guidance_scale, "eval_seed": cfg.data.eval_seed,
                "height": cfg.model.height, "width": cfg.model.width}
    return EvalResult(list(prompts), source, list(columns), relabelled, settings)


# ----------------------------------------------------------------------------- the table


def cell(values: torch.Tensor) -> dict[str, Any]:
    """Mean, standard error (sample std / sqrt(n)) and counts over the finite values (NaN: not scored)."""
    from treegrpo.trainer.evaluation import mean_and_standard_error

    finite = torch.isfinite(values)
    count = int(finite.sum())
    mean, se = mean_and_standard_error(values) if count else (math.nan, math.nan)
    return {"mean": mean, "se": se, "n": count, "unscored": int(values.numel() - count)}


def table(result: EvalResult) -> dict[str, dict[str, dict[str, Any]]]:
    """``{row: {column: cell}}``: each model, and the paired difference when both were scored."""
    rows = {row: {column: cell(values[column]) for column in result.columns} for row, values in result.scores.items()}
    if "trained" in result.scores:
        rows[DIFFERENCE] = {column: cell(result.scores["trained"][column] - result.scores["base"][column])
                            for column in result.columns}
    return rows


def _number(value: float) -> Optional[float]:
    """JSON has no NaN: a missing mean is ``null``."""
    return value if math.isfinite(value) else None


def by_group(result: EvalResult) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{row: {group: {column: cell}}}`` over the prompts' group field (DrawBench's category, GenEval's tag, HPDv2's
    style): GenEval's overall score is the mean of its six tags' accuracies. Empty without such a field."""
    group_field = _group_field(result.prompts)
    if group_field is None:
        return {}
    groups = [str((prompt_metadata(p) or {}).get(group_field, "")) for p in result.prompts]
    rows: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for row, scores in result.scores.items():
        rows[row] = {}
        for group in sorted(set(groups)):
            rows_of_group = torch.tensor([g == group for g in groups])
            rows[row][group] = {column: _plain(cell(scores[column][rows_of_group])) for column in result.columns}
    return rows


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """A cell with JSON's ``null`` for a missing mean or standard error."""
    return {**values, "mean": _number(values["mean"]), "se": _number(values["se"])}


def to_json(result: EvalResult) -> dict[str, Any]:
    """The table, the settings, the table by prompt group and every prompt's scores, as plain JSON values."""
    rows = {row: {column: _plain(values) for column, values in cells.items()} for row, cells in table(result).items()}
    per_prompt = [{"prompt": str(prompt), "metadata": prompt_metadata(prompt) or {},
                   **{row: {column: _number(float(scores[column][i])) for column in result.columns}
                      for row, scores in result.scores.items()}}
                  for i, prompt in enumerate(result.prompts)]
    return {**result.settings, "prompts": result.source, "num_prompts": len(result.prompts),
            "rewards": result.columns, "table": rows, "group_field": _group_field(result.prompts),
            "by_group": by_group(result), "per_prompt": per_prompt}


def _format(values: dict[str, Any], signed: bool) -> str:
    if not math.isfinite(values["mean"]):
        return "not scored"
    text = f"{values['mean']:+.4f} ± {values['se']:.4f}" if signed else f"{values['mean']:.4f} ± {values['se']:.4f}"
    return text + (f" ({values['unscored']} not scored)" if values["unscored"] else "")


def _escape(text: str, limit: int = 90) -> str:
    """A prompt fit for one Markdown table cell (pipes escaped, one line, at most ``limit`` characters)."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def markdown_table(result: EvalResult) -> str:
    """One row per model (and the paired difference), one column per reward: mean ± standard error."""
    lines = ["| model | " + " | ".join(result.columns) + " |", "|---|" + "---|" * len(result.columns)]
    for row, cells in table(result).items():
        lines.append(f"| {row} | " + " | ".join(_format(cells[c], row == DIFFERENCE) for c in result.columns) + " |")
    return "\n".join(lines)


def _group_field(prompts: Sequence[str]) -> Optional[str]:
    """The first of :data:`GROUP_FIELDS` that the prompts' metadata holds (DrawBench's ``category``, ...)."""
    held = {key for prompt in prompts for key in (prompt_metadata(prompt) or {})}
    return next((key for key in GROUP_FIELDS if key in held), None)


def worst_prompts(result: EvalResult, count: int) -> str:
    """For each reward, the ``count`` lowest scoring prompts of the trained model (else the base), the base's
    score beside; unscored images are left out."""
    model = "trained" if "trained" in result.scores else "base"
    group_field = _group_field(result.prompts)
    grouped = group_field is not None
    sections = []
    for column in result.columns:
        values = result.scores[model][column]
        order = [i for i in torch.argsort(values).tolist() if math.isfinite(float(values[i]))][:count]
        head = "| # | prompt | " + (f"{group_field} | " if grouped else "") + (
            "trained | base |" if model == "trained" else "base |")
        lines = [f"### {column}: the {len(order)} lowest scoring prompts ({model})", "", head,
                 "|---|---|" + ("---|" if grouped else "") + ("---|---|" if model == "trained" else "---|")]
        for rank, i in enumerate(order, start=1):
            scores = [f"{float(result.scores[m][column][i]):.4f}" for m in ([model, "base"] if model == "trained"
                                                                             else [model])]
            metadata = prompt_metadata(result.prompts[i]) or {}
            group = f" {_escape(str(metadata.get(group_field or '', '')), 30)} |" if grouped else ""
            lines.append(f"| {rank} | {_escape(result.prompts[i])} |{group} " + " | ".join(scores) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def markdown(result: EvalResult, per_prompt: Optional[int]) -> str:
    """The whole report: what was evaluated, the table, and (``per_prompt``) the worst prompts per reward."""
    s = result.settings
    about = (f"model `{s['model']}`" + (f", trained `{s['trained']}`" if s.get("trained") else "")
             + f"; {len(result.prompts)} prompts of `{result.source}`, one image each (ODE, {s['steps']} steps, "
             f"guidance {s['guidance_scale']}, data.eval_seed {s['eval_seed']}); mean ± standard error over prompts"
             + ("; the difference is paired (same noise per prompt)" if "trained" in result.scores else ""))
    parts = [f"## treegrpo eval: {result.source}", "", about, "", markdown_table(result)]
    if per_prompt:
        parts += ["", worst_prompts(result, per_prompt)]
    return "\n".join(parts) + "\n"


def run(request: EvalRequest) -> str:
    """Evaluate, write JSON + Markdown where :func:`output_paths` says, and return what to print."""
    result = evaluate_models(request)
    text = markdown(result, request.per_prompt)
    paths = output_paths(request.out, request.trained, result.source)
    if paths is None:
        return text + "(pass --out PATH to keep it as JSON and Markdown)\n"
    json_path, markdown_path = paths
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown_path.write_text(text, encoding="utf-8")
    return text + f"wrote {json_path} and {markdown_path}\n"
