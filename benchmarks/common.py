"""Shared pieces of the benchmarks: run specs and histories, the 2-D toy runner, summaries, plots.

A *task runner* is any ``Callable[[RunSpec], RunHistory]``: it trains one (method, learning rate,
seed) under a budget of model evaluations and returns reward at evaluation points with the
cumulative NFE and wall seconds there. The toy runner below drives the engine exactly as
:func:`treegrpo.toy.train_toy` does (same calls, same random draws), adding the budget, the
timing and sparse evaluation; ``tests/test_benchmarks.py`` checks that both give the same rewards.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


from treegrpo.math import plans
from treegrpo.engine.update import UpdateConfig
from treegrpo.math.likelihood_free import draws_per_sample
from treegrpo.math.loss import LossConfig
from treegrpo.engine.methods import TreeConfig, plan_for_iteration, preset
from treegrpo.toy import ToyRun, ToyTask, ToyVelocity, pretrain_toy


# ----------------------------------------------------------------------------- specs and histories


@dataclass
class RunSpec:
    """One training run: a labelled method variant at one learning rate and seed, under a budget."""

    label: str
    method: str
    lr: float
    seed: int
    budget_nfe: int
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EvalPoint:
    """Held-out reward after ``iteration`` iterations, with the cumulative cost spent to get there."""

    iteration: int
    rollout_nfe: int
    training_nfe: int
    reference_nfe: int
    seconds: float
    reward: float
    guard_fraction: float  # mean over the iterations since the previous point

    @property
    def nfe(self) -> int:
        """Budgeted model evaluations: rollout + training (the KL reference is listed apart)."""
        return self.rollout_nfe + self.training_nfe


@dataclass
class RunHistory:
    """What one run returns: its spec and its evaluation points (the first is before training)."""

    spec: RunSpec
    points: list[EvalPoint]
    leaves_per_prompt: int
    evaluation: dict[str, int] = field(default_factory=dict)
    """``{"points": evaluations over the budget, "size": samples or prompts each}``; empty in older logs."""

    @property
    def final(self) -> EvalPoint:
        return self.points[-1]

    @property
    def peak_reward(self) -> float:
        return max(point.reward for point in self.points)

    def keeps_peak(self, ratio: float) -> bool:
        """Whether the final reward is at least ``ratio`` times the best reward seen."""
        return self.final.reward >= ratio * self.peak_reward

    def to_json(self) -> dict[str, Any]:
        """Spec and evaluation points as columns (one list per field), to keep result files small."""
        columns = {name: [getattr(point, name) for point in self.points] for name in asdict(self.points[0])}
        return {"spec": asdict(self.spec), "leaves_per_prompt": self.leaves_per_prompt, "points": columns,
                "evaluation": dict(self.evaluation)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "RunHistory":
        """The inverse of :meth:`to_json`."""
        columns = value["points"]
        count = len(columns["reward"])
        points = [EvalPoint(**{name: columns[name][i] for name in columns}) for i in range(count)]
        return cls(RunSpec(**value["spec"]), points, int(value["leaves_per_prompt"]), dict(value.get("evaluation", {})))


TaskRunner = Callable[[RunSpec], RunHistory]


# ----------------------------------------------------------------------------- the 2-D toy task


@dataclass
class ToyProtocol:
    """Fixed settings of the toy runs (every method shares them)."""

    prompts_per_iteration: int = 8
    num_steps: int = 10
    noise_level: float = 0.7
    eval_samples: int = 512
    eval_points: int = 60  # evaluations spread evenly over the NFE budget (plus one before training)
    max_iterations: int = 100_000
    pretrain_steps: int = 1500  # rectified-flow pretraining of each seed's base (treegrpo.toy's default)
    update: UpdateConfig = field(default_factory=lambda: UpdateConfig(inner_epochs=1, parents_per_batch=256, grad_accum=0))


def iteration_cost(tree: TreeConfig, plan: plans.Plan, prompts: int, loss: Optional[LossConfig] = None) -> int:
    """Closed-form rollout + training NFE of one iteration (training: every trained parent, an upper bound; for a
    likelihood-free objective every leaf's training points)."""
    roots = prompts * tree.trees
    if loss is not None and loss.objective.likelihood_free:
        draws = draws_per_sample(len(plan), loss.timesteps, loss.timestep_fraction, loss.timestep_draws)
        return roots * (plans.rollout_nfe_per_tree(plan) + plans.leaves_per_tree(plan) * draws)
    return roots * (plans.rollout_nfe_per_tree(plan) + plans.training_nfe_per_tree(plan))


def leaves_per_prompt(tree: TreeConfig, num_steps: int) -> int:
    """Leaves one prompt gets per iteration (window placement does not change it)."""
    return tree.trees * plans.leaves_per_tree(plan_for_iteration(tree, num_steps, 0, 0))


@dataclass
class IterationSpend:
    """What one training iteration spent, as a task runner reports it."""

    rollout_nfe: int
    training_nfe: int
    seconds: float
    guard_fraction: float


def train_under_budget(
    spec: RunSpec, *, cost: Callable[[int], int], step: Callable[[int], IterationSpend], evaluate: Callable[[], float],
    eval_points: int, eval_size: int, max_iterations: int, kl_on: bool, leaves: int,
) -> RunHistory:
    """Run iterations while the next one's closed-form ``cost`` fits the budget; evaluate (untimed)
    before training, whenever the spent NFE crosses a multiple of ``budget / eval_points``, and at the end.

    Every task runner (toy, shapes) shares this loop, so budgets and evaluation points mean the same.
    ``eval_size``: the samples or prompts of one evaluation, recorded with the grid in the history.
    """
    spacing = spec.budget_nfe / eval_points
    rollout_nfe = training_nfe = reference_nfe = 0
    seconds = 0.0
    guards: list[float] = []

    def point(iteration: int) -> EvalPoint:
        guard = sum(guards) / len(guards) if guards else 0.0
        return EvalPoint(iteration, rollout_nfe, training_nfe, reference_nfe, seconds, evaluate(), guard)

    points = [EvalPoint(0, 0, 0, 0, 0.0, evaluate(), 0.0)]
    iteration = 0
    while iteration < max_iterations:
        if rollout_nfe + training_nfe + cost(iteration) > spec.budget_nfe:
            break
        spent = step(iteration)
        crossed = math.floor((rollout_nfe + training_nfe) / spacing)
        rollout_nfe += spent.rollout_nfe
        training_nfe += spent.training_nfe
        reference_nfe += spent.training_nfe if kl_on else 0
        seconds += spent.seconds
        guards.append(spent.guard_fraction)
        iteration += 1
        if math.floor((rollout_nfe + training_nfe) / spacing) > crossed:
            points.append(point(iteration))
            guards = []
    if points[-1].iteration != iteration:
        points.append(point(iteration))
    return RunHistory(spec, points, leaves, {"points": eval_points, "size": eval_size})


class ToyRunner:
    """Task runner on the 2-D toy; the pretrained base of each seed is made once and reused."""

    def __init__(self, protocol: ToyProtocol, task: ToyTask | None = None) -> None:
        self.protocol = protocol
        self.task = task or ToyTask()
        self._bases: dict[int, ToyVelocity] = {}

    def base(self, seed: int) -> ToyVelocity:
        """The rectified-flow pretrained velocity field of ``seed`` (cached)."""
        if seed not in self._bases:
            self._bases[seed] = pretrain_toy(self.task, steps=self.protocol.pretrain_steps, seed=seed)
        return self._bases[seed]

    def __call__(self, spec: RunSpec) -> RunHistory:
        return run_toy(spec, self.protocol, self.task, self.base(spec.seed))


def run_toy(spec: RunSpec, protocol: ToyProtocol, task: ToyTask, base: ToyVelocity) -> RunHistory:
    """Train ``spec`` on the toy for as many iterations as fit its NFE budget (``treegrpo.toy.ToyRun``)."""
    p = protocol
    method = preset(spec.method, **spec.overrides)
    run = ToyRun(task, method, base, lr=spec.lr, seed=spec.seed, num_steps=p.num_steps, noise_level=p.noise_level,
                 prompts_per_iteration=p.prompts_per_iteration, update=p.update)

    def step(iteration: int) -> IterationSpend:
        start = time.perf_counter()
        spent = run.step(run.plan(iteration))
        return IterationSpend(spent.rollout_nfe, spent.training_nfe, time.perf_counter() - start, spent.guard_fraction)

    return train_under_budget(
        spec, cost=lambda i: iteration_cost(method.tree, run.plan(i), p.prompts_per_iteration, method.loss), step=step,
        evaluate=lambda: run.evaluate(p.eval_samples), eval_points=p.eval_points, eval_size=p.eval_samples,
        max_iterations=p.max_iterations,
        kl_on=run.kl_on, leaves=leaves_per_prompt(method.tree, p.num_steps),
    )


# ----------------------------------------------------------------------------- curves and summaries


def evaluation_curve(histories: Sequence[RunHistory], axis: str) -> tuple[list[float], list[list[float]]]:
    """Seeds' rewards aligned by evaluation index, at the seeds' mean cost (``axis``: "nfe" or
    "seconds") by then.

    Evaluations fire as soon as a run passes each point of the budget grid, so they sit a little
    past it; reading a curve on the grid itself would credit each evaluation one point late.
    """
    count = min(len(h.points) for h in histories)
    xs = [sum(float(h.points[i].nfe if axis == "nfe" else h.points[i].seconds) for h in histories) / len(histories)
          for i in range(count)]
    return xs, [[h.points[i].reward for h in histories] for i in range(count)]


def mean_curve(columns: Sequence[Sequence[float]]) -> list[float]:
    """Mean of each column (one column per evaluation)."""
    return [sum(column) / len(column) for column in columns]


def first_reach(xs: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """First ``x`` where ``values`` reaches ``target`` (None if never)."""
    for x, value in zip(xs, values):
        if value >= target - 1e-12:
            return x
    return None


@dataclass
class GroupStats:
    """One (label, learning rate) group of seeds."""

    label: str
    method: str
    lr: float
    seeds: int
    leaves_per_prompt: int
    final_mean: float
    final_min: float
    final_max: float
    peak_mean: float
    keep_fraction: float
    iterations_mean: float
    nfe_per_iteration: float
    seconds_per_iteration: float
    guard_fraction_mean: float


def group_stats(histories: Sequence[RunHistory], keep_ratio: float) -> GroupStats:
    """Final and peak rewards, keep-peak fraction and per-iteration costs over the seeds of a group."""
    finals = [h.final.reward for h in histories]
    iterations = sum(h.final.iteration for h in histories)
    guards = [p.guard_fraction for h in histories for p in h.points[1:]]
    first = histories[0].spec
    return GroupStats(
        label=first.label, method=first.method, lr=first.lr, seeds=len(histories),
        leaves_per_prompt=histories[0].leaves_per_prompt,
        final_mean=sum(finals) / len(finals), final_min=min(finals), final_max=max(finals),
        peak_mean=sum(h.peak_reward for h in histories) / len(histories),
        keep_fraction=sum(h.keeps_peak(keep_ratio) for h in histories) / len(histories),
        iterations_mean=iterations / len(histories),
        nfe_per_iteration=sum(h.final.nfe for h in histories) / max(iterations, 1),
        seconds_per_iteration=sum(h.final.seconds for h in histories) / max(iterations, 1),
        guard_fraction_mean=sum(guards) / len(guards) if guards else 0.0,
    )


def pick_best(groups: Sequence[GroupStats], min_keep_fraction: float) -> tuple[GroupStats, bool]:
    """Highest mean final reward among stable groups (keep fraction > ``min_keep_fraction``).

    Returns the group and whether it is stable; when no learning rate is stable, the highest mean
    final reward overall is returned, flagged unstable.
    """
    stable = [g for g in groups if g.keep_fraction > min_keep_fraction]
    pool = stable or list(groups)
    best = max(pool, key=lambda g: g.final_mean)
    return best, bool(stable)


@dataclass
class ReachRow:
    """Cost for one label (at its chosen learning rate) to reach the reference's rewards.

    Two targets: the reference's final mean reward, and ``gain_target`` = the reference's mean start
    reward plus ``gain_fraction`` of its mean gain (less sensitive to noise once rewards saturate).
    """

    label: str
    lr: float
    stable: bool
    target: float
    nfe_to_target: float | None
    seconds_to_target: float | None
    nfe_ratio: float | None
    seconds_ratio: float | None
    seeds_reaching: float  # fraction of seeds whose own curve reaches the target
    gain_target: float
    nfe_to_gain: float | None
    seconds_to_gain: float | None
    nfe_ratio_gain: float | None
    seconds_ratio_gain: float | None


def reach_rows(best: dict[str, tuple[GroupStats, bool]], runs: dict[tuple[str, float], list[RunHistory]],
               reference: str, gain_fraction: float = 0.9) -> list[ReachRow]:
    """NFE and seconds each label's seed-mean curve needs to reach the reference's targets."""
    target = best[reference][0].final_mean
    reference_runs = runs[(reference, best[reference][0].lr)]
    start = sum(h.points[0].reward for h in reference_runs) / len(reference_runs)
    gain_target = start + gain_fraction * (target - start)
    costs: dict[str, tuple[float | None, ...]] = {}
    for label, (stats, _) in best.items():
        histories = runs[(label, stats.lr)]
        nfe, columns = evaluation_curve(histories, "nfe")
        seconds, _ = evaluation_curve(histories, "seconds")
        mean = mean_curve(columns)
        per_seed = [max(p.reward for p in h.points) >= target - 1e-12 for h in histories]
        costs[label] = (first_reach(nfe, mean, target), first_reach(seconds, mean, target),
                        first_reach(nfe, mean, gain_target), first_reach(seconds, mean, gain_target),
                        sum(per_seed) / len(per_seed))
    ref = costs[reference]
    rows = []
    for label, (stats, stable) in best.items():
        nfe, seconds, nfe_gain, seconds_gain, reaching = costs[label]
        rows.append(ReachRow(label, stats.lr, stable, target, nfe, seconds, _ratio(nfe, ref[0]),
                             _ratio(seconds, ref[1]), float(reaching or 0.0), gain_target, nfe_gain, seconds_gain,
                             _ratio(nfe_gain, ref[2]), _ratio(seconds_gain, ref[3])))
    return rows


def reach_cost(histories: Sequence[RunHistory], axis: str, target: float) -> float:
    """Cost (``axis``: "nfe" or "seconds") at which the seeds' mean curve first reaches ``target``; inf if never."""
    xs, columns = evaluation_curve(histories, axis)
    cost = first_reach(xs, mean_curve(columns), target)
    return math.inf if cost is None else cost


def bootstrap_reach_ratio(runs: Sequence[RunHistory], reference: Sequence[RunHistory], axis: str,
                          rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The cost ratio to reach the reference's final mean reward, and its 95 % bootstrap interval over seeds.

    Each round resamples the seeds of both groups with replacement; the target is the resampled
    reference's final mean, and the ratio is the runs' cost to it over the reference's own (inf when
    the runs' mean curve never reaches it). Returns (ratio on the data, 2.5th, 97.5th percentile).
    """
    def ratio(mine: Sequence[RunHistory], theirs: Sequence[RunHistory]) -> float:
        target = sum(h.final.reward for h in theirs) / len(theirs)
        own, other = reach_cost(mine, axis, target), reach_cost(theirs, axis, target)
        return (1.0 if own == 0 else math.inf) if other == 0 else own / other  # other == 0: no gain to reach

    rng = random.Random(seed)
    samples = sorted(ratio([rng.choice(runs) for _ in runs], [rng.choice(reference) for _ in reference])
                     for _ in range(rounds))
    low, high = samples[int(0.025 * (rounds - 1))], samples[int(math.ceil(0.975 * (rounds - 1)))]
    return ratio(runs, reference), low, high


def resolved(low: float, high: float) -> bool:
    """Whether a ratio's interval excludes 1 (the methods differ at that confidence)."""
    return high < 1.0 or low > 1.0


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


# ----------------------------------------------------------------------------- output


def fmt(value: float | None, spec: str = ".3g") -> str:
    """Number or "not reached"."""
    return "not reached" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(path: Path, series: dict[str, list[RunHistory]], target: float | None, title: str,
                threads: int = 1) -> None:
    """Reward against NFE and against seconds: seed mean and min/max band per label, per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, name in ((axes[0], "nfe"), (axes[1], "seconds")):
        for label, histories in series.items():
            xs, columns = evaluation_curve(histories, name)
            line, = axis.plot(xs, mean_curve(columns), label=label, marker="." if len(xs) < 20 else None)
            axis.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(),
                              alpha=0.15)
        if target is not None:
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("rollout + training NFE" if name == "nfe" else f"wall seconds (training loop, {threads} CPU thread{'s' if threads > 1 else ''})")
        axis.set_ylabel("held-out reward")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def rounded(value: Any, digits: int = 6) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (recursively)."""
    if isinstance(value, float):
        return float(format(value, f".{digits}g")) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as compact JSON, floats to 6 significant digits (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(payload), separators=(",", ":")) + "\n")


def portable_args(settings: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's settings as JSON, paths relative to the working folder (or bare file names
    when outside it), so a stored result names no folder of the machine that produced it."""
    here = Path.cwd().resolve()

    def portable(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [portable(item) for item in value]
        if isinstance(value, Path) or (isinstance(value, str) and value.startswith("/")):
            path = Path(value).resolve()
            return str(path.relative_to(here)) if path.is_relative_to(here) else path.name
        return value

    return json.loads(json.dumps({key: portable(value) for key, value in settings.items()}, default=str))
