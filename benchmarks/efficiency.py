"""Reward per model evaluation and per second: every preset at an equal NFE budget, several seeds.

Protocol (the main table): each method runs for as many iterations as fit ``--budget`` rollout +
training NFE, at every learning rate of one shared grid (``--lrs``) and every seed. A method's
learning rate is the one with the highest mean final reward among those where most seeds keep their
peak (final >= ``--keep-ratio`` x peak); the table then gives the NFE and seconds each method's
seed-mean curve needs to reach flat GRPO's (flow_grpo's) final mean reward, and the ratios.
Flat methods get ``--flat-trees`` trajectories per prompt (27 = the leaves of one k3w3 tree).

Ablations (``--ablation shape|window|stabilisers``) run TreeGRPO variants the same way; the target is
the first variant's final mean reward (shape: k3w3, the preset; window: the paper's geometric r=0.5;
stabilisers: treegrpo as ``--set`` makes it, one stabiliser or variance reduction added per variant).
A variant's own settings win over ``--set`` (an ablation's shape stays its shape).

Tasks (``--task``): ``toy``, the 2-D task of ``treegrpo.toy``; ``shapes``, the built-in task (the
shipped tiny SD3 base trained by the real trainer, ``shapes_task.py``).

    python -m benchmarks.efficiency --out benchmarks/results
    python -m benchmarks.efficiency --ablation shape --lrs 3e-3 --out benchmarks/results
    python -m benchmarks.efficiency --task shapes --threads 2 --lrs 1e-3 --out benchmarks/results

On the shapes task ``--set section.key=value ...`` adds trainer settings to every run (they
become part of its spec), e.g. ``--set train.lr_schedule=cosine``, or with a ``method:`` prefix to
that preset's runs only, e.g. ``--set treegrpo:train.parents_per_batch=11``; a run's
``train.iterations`` is the number of iterations that fit its budget, so schedules decay over the
whole run.

Every finished run is appended to ``OUT/<stem>.runs.jsonl`` at once, so an interrupted benchmark
keeps what it finished; ``--reuse FILE ...`` (that file, or an earlier result JSON) takes runs
with the same spec from there instead of training them again (runs are deterministic per seed).

``--jobs N`` trains N runs at a time in separate processes (spawned: CUDA works in each), e.g. the
shapes grid on one GPU (``--set model.device=cuda``). Runs are deterministic per seed either way, so
rewards and NFE do not depend on it; seconds are then measured on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from benchmarks.common import (
    GroupStats, ReachRow, RunHistory, RunSpec, TaskRunner, bootstrap_reach_ratio, fmt, group_stats, markdown_table,
    pick_best, plot_curves, portable_args, reach_rows, resolved, write_json,
)
from benchmarks.tasks import TASKS, train_one

TASK_DEFAULTS: dict[str, dict[str, int]] = {
    "toy": {"budget": 400_000, "eval_points": 60},
    "shapes": {"budget": 40_000, "eval_points": 8},
}
METHODS = ("treegrpo", "flow_grpo", "dance_grpo", "mix_grpo", "branch_grpo", "ddpo")
"""The GRPO-family presets the main protocol runs by default."""
LIKELIHOOD_FREE = ("diffusion_nft", "awm")
"""Presets trained on clean samples (``--methods`` adds them; ``--tree-fed`` also feeds them a tree's leaves)."""
FLAT_SCHEDULES = ("flow_grpo", "dance_grpo", "mix_grpo", "ddpo", *LIKELIHOOD_FREE)  # independent trajectories per prompt
Variant = tuple[str, str, dict[str, dict[str, Any]]]  # (label, preset, overrides)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="toy", choices=sorted(TASKS), help="where the runs train")
    parser.add_argument("--ablation", default="none", choices=["none", "shape", "window", "stabilisers"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *LIKELIHOOD_FREE])
    parser.add_argument("--tree-fed", action="store_true",
                        help="also train each likelihood-free method on the leaves of treegrpo's trees (its tree section, "
                             "--set included): labels '<method> tree-fed'")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2], help="shared learning-rate grid")
    parser.add_argument("--method-lr", nargs="*", default=[], metavar="LABEL=LR", dest="method_lrs",
                        help="train LABEL (a method, or an ablation variant's label) at LR only, instead of every rate "
                             "of --lrs: a rerun at each method's chosen rate, e.g. treegrpo=3e-4 dance_grpo=1e-3")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, help="rollout + training NFE per run (default: toy 400000, shapes 40000)")
    parser.add_argument("--flat-trees", type=int, default=27, help="trajectories per prompt of the flat methods")
    parser.add_argument("--keep-ratio", type=float, default=0.9, help="a seed keeps its peak if final >= ratio x peak")
    parser.add_argument("--gain-fraction", type=float, default=0.9,
                        help="second target: reference start + this fraction of its gain")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--eval-points", type=int, help="evaluations spread over the budget (default: toy 60, shapes 8)")
    parser.add_argument("--eval-samples", type=int, default=512, help="toy: samples per evaluation")
    parser.add_argument("--eval-prompts", type=int, default=128, help="shapes: held-out prompts per evaluation")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="shapes: CFG scale of rollouts and evaluation")
    parser.add_argument("--steps", type=int, default=8,
                        help="shapes: sampling steps (8 = the demo on the second-edition base; the tables of "
                             "RESULTS.md sections 5-6 used 4 and 6 on the first-edition base)")
    parser.add_argument("--set", nargs="*", default=[], metavar="[METHOD:]SECTION.KEY=VALUE", dest="settings",
                        help="shapes: trainer config values for every run (or one preset's runs), "
                             "e.g. train.lr_schedule=cosine treegrpo:train.parents_per_batch=11")
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="toy base pretraining steps per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--stem", help="output file names' stem (default: efficiency_TASK, or ablation_NAME_TASK)")
    parser.add_argument("--reuse", nargs="*", type=Path, default=[],
                        help="earlier result .json or .runs.jsonl files whose runs with the same spec are reused")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each in its own process")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds of the ratios' intervals over seeds")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.settings and args.task != "shapes":
        parser.error("--set applies to --task shapes only")
    for file in args.reuse:
        if not file.is_file():
            parser.error(f"--reuse {file}: no such file; pass a result .json or a .runs.jsonl an earlier run wrote")
    args.lr_by_label = {}
    for item in args.method_lrs:
        label, _, rate = item.partition("=")
        try:
            args.lr_by_label[label] = [float(rate)]
        except ValueError:
            parser.error(f"--method-lr {item!r}: expected LABEL=LR with a number, e.g. treegrpo=3e-4")
    defaults = TASK_DEFAULTS[args.task]
    args.budget = args.budget if args.budget is not None else defaults["budget"]
    args.eval_points = args.eval_points if args.eval_points is not None else defaults["eval_points"]
    return args


def main_variants(methods: Sequence[str], flat_trees: int) -> list[Variant]:
    """Every preset; flat ones get ``flat_trees`` trajectories per prompt."""
    return [(m, m, {"tree": {"trees": flat_trees}} if m in FLAT_SCHEDULES else {}) for m in methods]


def shape_variants() -> list[Variant]:
    """Tree shapes of the paper's ablation (each with the preset's window placement)."""
    shapes = [("k3w3", 3, 3, 1), ("k2w3", 2, 3, 1), ("k2w4", 2, 4, 1), ("k4w3", 4, 3, 1), ("k3w3 x2 trees", 3, 3, 2)]
    return [(label, "treegrpo", {"tree": {"k": k, "window": w, "trees": trees}}) for label, k, w, trees in shapes]


def window_variants() -> list[Variant]:
    """Window placements for k3w3: fixed at step 0, shifting (1 step every 25 iterations), geometric r."""
    return [
        ("geometric r=0.5", "treegrpo", {"tree": {"window_placement": "geometric", "geometric_ratio": 0.5}}),
        ("geometric r=0.3", "treegrpo", {"tree": {"window_placement": "geometric", "geometric_ratio": 0.3}}),
        ("fixed start 0", "treegrpo", {"tree": {"window_placement": "fixed", "window_start": 0}}),
        ("shifting 1/25 it", "treegrpo", {"tree": {"window_placement": "shifting", "window_start": 0,
                                                    "shift": 1, "shift_every": 25}}),
    ]


def stabiliser_variants() -> list[Variant]:
    """TreeGRPO as set (label ``treegrpo``: the main grid's runs are reused), then each stabiliser and
    variance reduction alone; the tree variants keep the NFE per prompt (8 leaves: one k8 tree, 2 x k4)."""
    two_trees = {"tree": {"k": 4, "trees": 2}}
    return [
        ("treegrpo", "treegrpo", {}),
        ("ratio_norm", "treegrpo", {"loss": {"ratio_norm": True}}),
        ("step_reweight", "treegrpo", {"loss": {"step_reweight": True}}),
        ("depth_scale", "treegrpo", {"advantage": {"depth_scale": True}}),
        ("kl 0.04", "treegrpo", {"loss": {"kl_beta": 0.04}}),
        ("antithetic", "treegrpo", {"tree": {"antithetic": True}}),
        ("component_norm", "treegrpo", {"advantage": {"component_norm": True}}),
        ("2 trees x k4", "treegrpo", two_trees),
        ("2 trees x k4, sibling baseline", "treegrpo", {**two_trees, "advantage": {"baseline": "siblings"}}),
    ]


def with_settings(variants: list[Variant], settings: Sequence[str]) -> list[Variant]:
    """Every variant with ``[method:]section.key=value`` settings added to its overrides (part of each
    run's spec); a ``method:`` prefix limits a setting to the variants of that preset."""
    extra: list[tuple[str, str, str, str]] = []  # (method or "", section, key, value)
    for item in settings:
        key, sep, value = item.partition("=")
        scope, colon, key = key.rpartition(":")
        section, dot, name = key.partition(".")
        if not (sep and dot and name) or (colon and scope not in (*METHODS, *LIKELIHOOD_FREE)):
            raise SystemExit(f"--set {item!r} must look like [method:]section.key=value with method one of "
                             f"{', '.join(METHODS)}, e.g. train.lr_schedule=cosine or treegrpo:train.warmup=5")
        extra.append((scope, section, name, value))
    merged = []
    for label, method, overrides in variants:
        sections = {section: dict(values) for section, values in overrides.items()}
        for scope, section, name, value in extra:
            if scope in ("", method) and name not in overrides.get(section, {}):  # a variant's own setting wins
                sections.setdefault(section, {})[name] = value
        merged.append((label, method, sections))
    return merged


def variants_for(args: argparse.Namespace) -> tuple[list[Variant], str]:
    """The variants of the chosen protocol and the label whose final reward is the target."""
    if args.ablation == "shape":
        return with_settings(shape_variants(), args.settings), "k3w3"
    if args.ablation == "window":
        return with_settings(window_variants(), args.settings), "geometric r=0.5"
    if args.ablation == "stabilisers":
        return with_settings(stabiliser_variants(), args.settings), "treegrpo"
    if "flow_grpo" not in args.methods:
        raise SystemExit("the main protocol measures against flow_grpo: keep it in --methods")
    variants = with_settings(main_variants(args.methods, args.flat_trees), args.settings)
    if args.tree_fed:
        variants += tree_fed_variants(variants)
    return variants, "flow_grpo"


def tree_fed_variants(variants: Sequence[Variant]) -> list[Variant]:
    """Each likelihood-free variant again with treegrpo's tree section (its preset's shape, then ``--set``)."""
    from treegrpo.engine.methods import preset_sections

    tree_variant = next((v for v in variants if v[1] == "treegrpo"), None)
    if tree_variant is None:
        raise SystemExit("--tree-fed feeds the likelihood-free methods treegrpo's trees: keep treegrpo in --methods")
    tree = {**preset_sections("treegrpo")["tree"], **tree_variant[2].get("tree", {})}
    fed = []
    for label, method, overrides in variants:
        if method in LIKELIHOOD_FREE:
            sections = {section: dict(values) for section, values in overrides.items()}
            sections["tree"] = dict(tree)
            fed.append((f"{label} tree-fed", method, sections))
    return fed


def spec_key(spec: RunSpec) -> str:
    """A run's identity for reuse: everything that determines its result."""
    return json.dumps(asdict(spec), sort_keys=True)


def load_runs(files: Sequence[Path]) -> dict[str, RunHistory]:
    """Finished runs from result JSONs (``runs``) or run logs (one JSON object per line), by spec."""
    found: dict[str, RunHistory] = {}
    for file in files:
        text = file.read_text()
        entries = json.loads(text)["runs"] if file.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
        for entry in entries:
            history = RunHistory.from_json(entry)
            found[spec_key(history.spec)] = history
    return found


def run_all(runner: TaskRunner, variants: Sequence[Variant], lrs: Mapping[str, Sequence[float]], seeds: Sequence[int],
            budget: int, log: Callable[[str], None], reuse: Optional[dict[str, RunHistory]] = None,
            evaluation: Optional[dict[str, int]] = None,
            run_log: Optional[Path] = None,
            submit: Optional[Callable[[RunSpec], Future[dict[str, Any]]]] = None) -> dict[tuple[str, float], list[RunHistory]]:
    """Every (variant, lr of ``lrs[label]``, seed), from ``reuse`` or trained (by ``submit``, a worker pool's future of the
    history's JSON, when given; else one after the other here); each new run is logged as it finishes;
    histories grouped by (label, lr) in grid order.

    A run is reused only if it was evaluated as ``evaluation`` asks (same grid and size) or its log predates that
    record: the grid never changes training (tested), but the reach ratios are read at the evaluations.
    """
    specs = [RunSpec(label, method, lr, seed, budget, overrides)
             for seed in seeds for label, method, overrides in variants for lr in lrs[label]]
    done: dict[str, RunHistory] = {}
    for key, history in (reuse or {}).items():
        if evaluation and history.evaluation and history.evaluation != evaluation:
            log(f"not reused (evaluated {history.evaluation}, this protocol evaluates {evaluation}): {key}")
        else:
            done[key] = history
    start = time.perf_counter()

    def finished(spec: RunSpec, history: RunHistory, source: str) -> None:
        done[spec_key(spec)] = history
        if run_log is not None and source != "reused":
            run_log.parent.mkdir(parents=True, exist_ok=True)
            with open(run_log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(history.to_json()) + "\n")
        log(f"{spec.label:>18} lr={spec.lr:<7g} seed={spec.seed}  it={history.final.iteration:5d}  "
            f"reward {history.points[0].reward:.3f} -> {history.final.reward:.3f} "
            f"(peak {history.peak_reward:.3f})  {source}")

    todo = [spec for spec in specs if spec_key(spec) not in done]
    for spec in specs:
        if spec_key(spec) in done:
            finished(spec, done[spec_key(spec)], "reused")
    if submit is not None:
        futures = {submit(spec): spec for spec in todo}
        for future in as_completed(futures):
            finished(futures[future], RunHistory.from_json(future.result()),
                     f"{time.perf_counter() - start:6.1f}s since start")
    else:
        for spec in todo:
            started = time.perf_counter()
            finished(spec, runner(spec), f"{time.perf_counter() - started:5.1f}s")
    runs: dict[tuple[str, float], list[RunHistory]] = {}
    for spec in specs:
        runs.setdefault((spec.label, spec.lr), []).append(done[spec_key(spec)])
    return runs


def choose_learning_rates(runs: dict[tuple[str, float], list[RunHistory]], variants: Sequence[Variant],
                          lrs: Mapping[str, Sequence[float]], keep_ratio: float) -> tuple[dict[str, tuple[GroupStats, bool]], list[GroupStats]]:
    """Per label: the chosen group and whether it is stable; also every group's stats."""
    every: list[GroupStats] = []
    best: dict[str, tuple[GroupStats, bool]] = {}
    for label, _, _ in variants:
        groups = [group_stats(runs[(label, lr)], keep_ratio) for lr in lrs[label]]
        every.extend(groups)
        best[label] = pick_best(groups, min_keep_fraction=0.5)
    return best, every


def reach_table(rows: Sequence[ReachRow], best: dict[str, tuple[GroupStats, bool]], reference: str) -> str:
    """Markdown: cost to reach the reference's final mean reward, and ratios."""
    header = ["method", "leaves/prompt", "lr", "final reward mean [min, max]", "keeps peak", "NFE/it", "s/it",
              "NFE to target", f"NFE / {reference}", "s to target", f"s / {reference}", "seeds reaching",
              "NFE / ref @gain", "s / ref @gain"]
    body = []
    for row in rows:
        stats, stable = best[row.label]
        body.append([
            row.label, str(stats.leaves_per_prompt), f"{row.lr:g}" + ("" if stable else " (unstable)"),
            f"{stats.final_mean:.3f} [{stats.final_min:.3f}, {stats.final_max:.3f}]",
            f"{stats.keep_fraction:.2f}", f"{stats.nfe_per_iteration:.0f}", f"{stats.seconds_per_iteration:.4f}",
            fmt(row.nfe_to_target, ".3g"), fmt(row.nfe_ratio, ".2f"), fmt(row.seconds_to_target, ".3g"),
            fmt(row.seconds_ratio, ".2f"), f"{row.seeds_reaching:.2f}",
            fmt(row.nfe_ratio_gain, ".2f"), fmt(row.seconds_ratio_gain, ".2f"),
        ])
    return markdown_table(header, body)


INTERVAL_REFERENCES: tuple[tuple[str, str], ...] = (("flow_grpo", "nfe"), ("flow_grpo", "seconds"), ("dance_grpo", "seconds"))
"""The ratios the issue's goals name: NFE and seconds to flat GRPO's final reward, seconds to DanceGRPO's."""


def interval_rows(best: dict[str, tuple[GroupStats, bool]], runs: dict[tuple[str, float], list[RunHistory]],
                  rounds: int) -> list[dict[str, Any]]:
    """Each label's cost ratio to each reference's final mean reward (each at its chosen rate), with a
    95 % bootstrap interval over seeds and whether the interval excludes 1."""
    rows = []
    for reference, axis in INTERVAL_REFERENCES:
        if reference not in best:
            continue
        theirs = runs[(reference, best[reference][0].lr)]
        for label, (stats, _) in best.items():
            if label == reference:
                continue
            ratio, low, high = bootstrap_reach_ratio(runs[(label, stats.lr)], theirs, axis, rounds=rounds)
            rows.append({"label": label, "reference": reference, "axis": axis, "ratio": ratio, "low": low,
                         "high": high, "resolved": resolved(low, high)})
    return rows


def interval_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: ratios with their bootstrap intervals ("not resolved" where the interval holds 1)."""
    def number(value: float) -> str:
        return "never" if math.isinf(value) else f"{value:.2f}"

    body = [[r["label"], f"{'NFE' if r['axis'] == 'nfe' else 'seconds'} to {r['reference']}'s final", number(r["ratio"]),
             f"[{number(r['low'])}, {number(r['high'])}]", "resolved" if r["resolved"] else "not resolved"] for r in rows]
    return markdown_table(["method", "cost ratio", "on the seeds", "95 % bootstrap interval", "interval vs 1"], body)


def grid_table(groups: Sequence[GroupStats]) -> str:
    """Markdown: every (label, lr) group's final reward and stability."""
    header = ["method", "lr", "final mean", "final min", "peak mean", "keeps peak", "iterations", "guard fraction"]
    body = [[g.label, f"{g.lr:g}", f"{g.final_mean:.3f}", f"{g.final_min:.3f}", f"{g.peak_mean:.3f}",
             f"{g.keep_fraction:.2f}", f"{g.iterations_mean:.0f}", f"{g.guard_fraction_mean:.3f}"] for g in groups]
    return markdown_table(header, body)


def output_stem(args: argparse.Namespace) -> str:
    """Output files' stem: ``--stem``, else named after the task and ablation."""
    if args.stem:
        return str(args.stem)
    return f"efficiency_{args.task}" if args.ablation == "none" else f"ablation_{args.ablation}_{args.task}"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the protocol, print the tables, write JSON and PNG under ``--out``; returns the JSON payload."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log: Callable[[str], None] = (lambda _: None) if args.quiet else (lambda line: print(line, flush=True))
    variants, reference = variants_for(args)
    unknown = sorted(set(args.lr_by_label) - {label for label, _, _ in variants})
    if unknown:
        raise SystemExit(f"--method-lr names {unknown}, which this run does not train; use labels of "
                         f"{[label for label, _, _ in variants]}")
    lrs = {label: args.lr_by_label.get(label, args.lrs) for label, _, _ in variants}
    runner = TASKS[args.task](args)
    started = time.time()
    stem = output_stem(args)
    pool = (ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
            if args.jobs > 1 else None)
    try:
        evaluation = {"points": args.eval_points, "size": args.eval_prompts if args.task == "shapes" else args.eval_samples}
        runs = run_all(runner, variants, lrs, args.seeds, args.budget, log, reuse=load_runs(args.reuse), evaluation=evaluation,
                       run_log=args.out / f"{stem}.runs.jsonl",
                       submit=None if pool is None else functools.partial(pool.submit, train_one, args))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    best, every = choose_learning_rates(runs, variants, lrs, args.keep_ratio)
    rows = reach_rows(best, runs, reference, args.gain_fraction)
    intervals = interval_rows(best, runs, args.bootstrap) if args.ablation == "none" else []
    tables = {"reach": reach_table(rows, best, reference), "grid": grid_table(every)}
    if intervals:
        tables["intervals"] = interval_table(intervals)
    plot = args.out / f"{stem}.png"
    chosen = {label: runs[(label, stats.lr)] for label, (stats, _) in best.items()}
    plot_curves(plot, chosen, rows[0].target,
                f"{stem}: seed mean and min/max band, each at its chosen lr; dotted: {reference} final mean",
                threads=args.threads)
    payload = {
        "protocol": "main" if args.ablation == "none" else f"ablation_{args.ablation}",
        "task": args.task, "reference": reference, "target_reward": rows[0].target,
        "gain_target_reward": rows[0].gain_target,
        "args": portable_args(vars(args)),
        "torch_threads": torch.get_num_threads(), "wall_seconds_total": time.time() - started,
        "chosen": {label: {"lr": stats.lr, "stable": stable} for label, (stats, stable) in best.items()},
        "reach": [asdict(row) for row in rows], "intervals": intervals, "groups": [asdict(g) for g in every],
        "tables": tables, "plot": plot.name,  # beside this JSON
        "runs": [h.to_json() for histories in runs.values() for h in histories],
    }
    write_json(args.out / f"{stem}.json", payload)
    if not args.quiet:
        print(f"\nTarget: {reference} final mean reward {rows[0].target:.4f}; @gain: {rows[0].gain_target:.4f} "
              f"(start + {args.gain_fraction} x gain); keep ratio {args.keep_ratio}\n")
        print(tables["reach"], "\n")
        print(tables["grid"])
        if intervals:
            print("\n" + tables["intervals"])
        print(f"\nwrote {args.out / (stem + '.json')} and {plot}")
    return payload


if __name__ == "__main__":
    main()
