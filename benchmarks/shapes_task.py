"""The built-in shapes task as a benchmark runner: the shipped tiny SD3 base trained by the real trainer.

Every run starts from the shipped base (``builtin:shapes``) with a fresh LoRA, takes the demo's
settings (``treegrpo.demo.run.DEMO_CONFIG``: 8 steps unless ``ShapesProtocol.steps`` says
otherwise, LoRA r8, minibatches of 32 parents, clip 1e-2) and the method preset, and trains
through :class:`treegrpo.trainer.Trainer` one iteration at a time until the next iteration would
exceed the NFE budget. (RESULTS.md section 5 sets 11 parents for k3 trees and 16 for BranchGRPO
with ``--set``, so every optimizer step sees 32-33 edges.) The reward at each evaluation point
is the shapes reward of ODE samples of fixed held-out prompts with fixed noise (``data.eval_seed``),
so every method and seed is measured on the same images' prompts and noise.

Presets written for 10+ steps are adapted to the task's steps (``adapt_to_steps``): MixGRPO's SDE
window and BranchGRPO's split steps are scaled down; everything else is the preset as shipped.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks.common import IterationSpend, RunHistory, RunSpec, iteration_cost, leaves_per_prompt, train_under_budget

from treegrpo.math.loss import LossConfig
from treegrpo.engine.methods import TreeConfig, plan_for_iteration


@dataclass
class ShapesProtocol:
    """Fixed settings of the shapes runs (every method shares them)."""

    prompts_per_iteration: int = 8
    eval_prompts: int = 128
    eval_points: int = 8  # evaluations spread evenly over the NFE budget (plus one before training)
    guidance_scale: float = 1.0
    steps: int = 8  # sampling steps (the demo's and the base's sampler: a 3-step window leaves an ODE tail)
    max_iterations: int = 10_000


def adapt_to_steps(method: str, steps: int) -> dict[str, dict[str, Any]]:
    """Preset fields that assume 10+ sampling steps, rescaled to ``steps`` (empty when nothing to do)."""
    if method == "mix_grpo":
        return {"tree": {"window": max(1, steps // 2)}}
    if method == "branch_grpo":
        return {"tree": {"split_steps": list(range(min(4, steps)))}}
    return {}


def dotted(sections: dict[str, dict[str, Any]]) -> list[str]:
    """``{"tree": {"k": 2}}`` -> ``["tree.k=2"]`` (lists in YAML flow style)."""
    items = []
    for section, values in sections.items():
        for key, value in values.items():
            text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, (list, tuple)) else str(value)
            items.append(f"{section}.{key}={text}")
    return items


def iterations_in_budget(tree: TreeConfig, steps: int, prompts: int, budget: int, seed: int, cap: int,
                         loss: Optional[LossConfig] = None) -> int:
    """Iterations whose closed-form rollout + training NFE fit ``budget`` (the horizon of lr schedules)."""
    spent = iteration = 0
    while iteration < cap:
        cost = iteration_cost(tree, plan_for_iteration(tree, steps, iteration, seed), prompts, loss)
        if spent + cost > budget:
            break
        spent += cost
        iteration += 1
    return max(1, iteration)


def shapes_config(spec: RunSpec, protocol: ShapesProtocol, run_dir: Path) -> Any:
    """The trainer config of one benchmark run (``train.iterations``: the iterations that fit the budget)."""
    from treegrpo.config import resolve_config
    from treegrpo.demo.run import DEMO_CONFIG

    values = copy.deepcopy(DEMO_CONFIG)
    values.pop("tree")  # the demo's tree shape is TreeGRPO's; other presets keep their own
    steps = protocol.steps
    sections = adapt_to_steps(spec.method, steps)
    for section, overrides in spec.overrides.items():
        sections.setdefault(section, {}).update(overrides)
    overrides = [
        f"seed={spec.seed}", f"train.lr={spec.lr}", f"output_dir={run_dir}",
        f"data.prompts_per_iteration={protocol.prompts_per_iteration}", f"data.num_eval_prompts={protocol.eval_prompts}",
        f"sampling.guidance_scale={protocol.guidance_scale}", f"sampling.steps={steps}", *dotted(sections),
    ]
    cfg = resolve_config(values, overrides, source="shapes benchmark", method=spec.method)
    cfg.train.iterations = iterations_in_budget(cfg.tree, steps, protocol.prompts_per_iteration, spec.budget_nfe,
                                                spec.seed, protocol.max_iterations, cfg.loss)
    return cfg


class ShapesRunner:
    """Task runner on the built-in shapes task (each run loads the shipped base afresh)."""

    def __init__(self, protocol: ShapesProtocol) -> None:
        self.protocol = protocol

    def __call__(self, spec: RunSpec) -> RunHistory:
        with tempfile.TemporaryDirectory(prefix="treegrpo-bench-") as folder:
            return run_shapes(spec, self.protocol, Path(folder))


def run_shapes(spec: RunSpec, protocol: ShapesProtocol, run_dir: Path) -> RunHistory:
    """Train ``spec`` on the shapes task for as many iterations as fit its NFE budget."""
    from treegrpo.trainer import Trainer
    from treegrpo.trainer.evaluation import evaluate

    cfg = shapes_config(spec, protocol, run_dir)
    trainer = Trainer(cfg, run_dir=run_dir)

    def held_out_reward() -> float:
        with trainer.eval_weights():
            result, _, _ = evaluate(trainer.backbone, trainer.rewards, trainer.prompts.eval, steps=cfg.sampling.steps,
                                 guidance_scale=cfg.sampling.guidance_scale, seed=cfg.data.eval_seed,
                                 max_batch=cfg.sampling.max_batch)
        return result["eval/score"]

    def step(iteration: int) -> IterationSpend:
        metrics = trainer.run_iteration(iteration).metrics
        return IterationSpend(int(metrics["rollout_nfe"]), int(metrics["training_nfe"]), float(metrics["seconds"]),
                              float(metrics["guard_fraction"]))

    def cost(iteration: int) -> int:
        plan = plan_for_iteration(cfg.tree, cfg.sampling.steps, iteration, cfg.seed)
        return iteration_cost(cfg.tree, plan, protocol.prompts_per_iteration, cfg.loss)

    return train_under_budget(
        spec, cost=cost, step=step, evaluate=held_out_reward, eval_points=protocol.eval_points, eval_size=protocol.eval_prompts,
        max_iterations=protocol.max_iterations, kl_on=cfg.loss.kl_beta > 0,
        leaves=leaves_per_prompt(cfg.tree, cfg.sampling.steps),
    )
