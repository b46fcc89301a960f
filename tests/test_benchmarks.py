"""The benchmark scripts run at a tiny size; their JSON has the expected fields and NFE matches the closed forms."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch

from treegrpo.math import plans
from treegrpo.engine.methods import plan_for_iteration, preset
from treegrpo.toy import ToyRunConfig, ToyTask, pretrain_toy, train_toy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Benchmarks set one torch thread; restore the previous count afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY_TOY = ["--seeds", "0", "--lrs", "3e-3", "--budget", "6000", "--prompts", "2", "--eval-points", "4",
            "--eval-samples", "32", "--pretrain-steps", "30", "--quiet"]


def closed_form_rollout_nfe(method: str, overrides: dict[str, dict[str, object]], iterations: int, prompts: int, seed: int) -> int:
    """Sum over iterations of the rollout NFE that ``treegrpo.math.plans`` predicts for each iteration's plan."""
    config = preset(method, **overrides)
    total = 0
    for iteration in range(iterations):
        plan = plan_for_iteration(config.tree, 10, iteration, seed)
        total += prompts * config.tree.trees * plans.rollout_nfe_per_tree(plan)
    return total


def test_efficiency_main_protocol_json(tmp_path: Path) -> None:
    from benchmarks import efficiency
    payload = efficiency.main([*TINY_TOY, "--methods", "treegrpo", "flow_grpo", "branch_grpo", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "efficiency_toy.json").read_text())
    assert (tmp_path / "efficiency_toy.png").stat().st_size > 0
    assert saved["reference"] == "flow_grpo" and saved["target_reward"] == pytest.approx(payload["target_reward"], rel=1e-5)
    assert {row["label"] for row in saved["reach"]} == {"treegrpo", "flow_grpo", "branch_grpo"}
    for key in ("nfe_to_target", "seconds_to_target", "nfe_ratio", "seconds_ratio", "seeds_reaching", "gain_target"):
        assert all(key in row for row in saved["reach"])
    flow = next(row for row in saved["reach"] if row["label"] == "flow_grpo")
    assert flow["nfe_to_target"] is not None  # the reference reaches its own final mean reward
    assert {"keep_fraction", "final_mean", "nfe_per_iteration", "seconds_per_iteration"} <= set(saved["groups"][0])
    for run in saved["runs"]:
        spec, points = run["spec"], run["points"]  # points: one list per field
        iterations = points["iteration"]
        assert iterations[0] == 0 and iterations[-1] > 0 and len(points["reward"]) == len(iterations)
        assert points["rollout_nfe"][-1] + points["training_nfe"][-1] <= spec["budget_nfe"]
        assert points["seconds"] == sorted(points["seconds"])
        expected = closed_form_rollout_nfe(spec["method"], spec["overrides"], iterations[-1], 2, spec["seed"])
        assert points["rollout_nfe"][-1] == expected
    leaves = {run["spec"]["label"]: run["leaves_per_prompt"] for run in saved["runs"]}
    assert leaves == {"treegrpo": 27, "flow_grpo": 27, "branch_grpo": 16}

    # another invocation reuses every finished run (from the run log or the result JSON) and trains none
    assert len((tmp_path / "efficiency_toy.runs.jsonl").read_text().splitlines()) == 3
    for source in ("efficiency_toy.runs.jsonl", "efficiency_toy.json"):
        out = tmp_path / source.replace(".", "_")
        again = efficiency.main([*TINY_TOY, "--methods", "treegrpo", "flow_grpo", "branch_grpo", "--out", str(out),
                                 "--reuse", str(tmp_path / source)])
        assert not (out / "efficiency_toy.runs.jsonl").exists()
        assert again["target_reward"] == pytest.approx(payload["target_reward"], rel=1e-5)
        assert [r["label"] for r in again["reach"]] == [r["label"] for r in payload["reach"]]

    # a run evaluated on another grid is trained again, not reused (the reach ratios are read at the evaluations)
    assert {tuple(run["evaluation"].items()) for run in saved["runs"]} == {(("points", 4), ("size", 32))}
    lines: list[str] = []
    flat = [("flow_grpo", "flow_grpo", next(r["spec"]["overrides"] for r in saved["runs"] if r["spec"]["label"] == "flow_grpo"))]
    assert efficiency.run_all(lambda spec: pytest.fail("trained"), flat, {"flow_grpo": [3e-3]}, [0], 6000, lines.append,
                              reuse=efficiency.load_runs([tmp_path / "efficiency_toy.json"]),
                              evaluation={"points": 4, "size": 32})
    def train(spec: object) -> object:
        raise RuntimeError("trained again")

    with pytest.raises(RuntimeError, match="trained again"):
        efficiency.run_all(train, flat,
                           {"flow_grpo": [3e-3]}, [0], 6000, lines.append,
                           reuse=efficiency.load_runs([tmp_path / "efficiency_toy.json"]), evaluation={"points": 2, "size": 32})
    assert any(line.startswith("not reused (evaluated {'points': 4, 'size': 32}") for line in lines)

    # --jobs 2 trains the runs in worker processes: each history lands at its own spec, identical to the serial run
    parallel = efficiency.main([*TINY_TOY, "--methods", "treegrpo", "flow_grpo", "branch_grpo", "--out",
                                str(tmp_path / "jobs"), "--jobs", "2"])
    rewards = {run["spec"]["label"]: run["points"]["reward"] for run in payload["runs"]}
    assert {run["spec"]["label"]: run["points"]["reward"] for run in parallel["runs"]} == rewards
    assert len((tmp_path / "jobs" / "efficiency_toy.runs.jsonl").read_text().splitlines()) == 3


def test_method_lr_trains_one_label_at_its_own_rate_and_stem_names_the_files(tmp_path: Path) -> None:
    """A dense rerun at each method's chosen rate: --method-lr replaces --lrs for that label only."""
    from benchmarks import efficiency
    settings = [*TINY_TOY[:2], *TINY_TOY[4:], "--methods", "treegrpo", "flow_grpo", "--lrs", "3e-3", "1e-2",
                "--method-lr", "treegrpo=1e-2", "--stem", "dense", "--out", str(tmp_path)]
    payload = efficiency.main(settings)
    assert sorted((run["spec"]["label"], run["spec"]["lr"]) for run in payload["runs"]) == [
        ("flow_grpo", 3e-3), ("flow_grpo", 1e-2), ("treegrpo", 1e-2)]
    assert payload["chosen"]["treegrpo"]["lr"] == 1e-2
    assert (tmp_path / "dense.json").is_file() and (tmp_path / "dense.runs.jsonl").is_file()
    assert not (tmp_path / "efficiency_toy.json").exists()
    with pytest.raises(SystemExit) as bad_rate:
        efficiency.main([*settings[:-2], "--method-lr", "treegrpo=fast", "--out", str(tmp_path / "bad")])
    assert bad_rate.value.code == 2
    with pytest.raises(SystemExit, match="dance_grpo"):
        efficiency.main([*settings[:-2], "--method-lr", "dance_grpo=1e-3", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_reach_is_read_at_the_evaluations_not_on_the_budget_grid() -> None:
    """Hand-worked: evaluations land just past the 5k grid points (5088, 10176); the tree's seed mean
    reaches flat's final mean (0.61) at its first evaluation, so 5088 NFE, not the next grid point."""
    from benchmarks import common

    def history(label: str, seed: int, nfe: list[int], seconds: list[float], rewards: list[float]):
        points = [common.EvalPoint(i, n, 0, 0, t, r, 0.0) for i, (n, t, r) in enumerate(zip(nfe, seconds, rewards))]
        return common.RunHistory(common.RunSpec(label, label, 1e-3, seed, 12_000), points, 27)

    runs = {
        ("flat", 1e-3): [history("flat", 0, [0, 5184, 10368], [0, 10, 20], [0.5, 0.55, 0.60]),
                         history("flat", 1, [0, 5184, 10368], [0, 11, 22], [0.5, 0.57, 0.62])],
        ("tree", 1e-3): [history("tree", 0, [0, 5088, 10176], [0, 2, 4], [0.5, 0.62, 0.58]),
                         history("tree", 1, [0, 5088, 10176], [0, 3, 5], [0.5, 0.60, 0.60])],
    }
    best = {label: (common.group_stats(runs[(label, 1e-3)], 0.9), True) for label in ("flat", "tree")}
    rows = {row.label: row for row in common.reach_rows(best, runs, "flat", gain_fraction=0.9)}
    assert rows["flat"].target == pytest.approx(0.61) and rows["flat"].gain_target == pytest.approx(0.599)
    assert (rows["flat"].nfe_to_target, rows["flat"].seconds_to_target) == (10368, 21)  # the seeds' mean clock
    tree = rows["tree"]
    assert (tree.nfe_to_target, tree.seconds_to_target, tree.nfe_to_gain) == (5088, 2.5, 5088)
    assert tree.nfe_ratio == pytest.approx(5088 / 10368) and tree.seconds_ratio == pytest.approx(2.5 / 21)
    assert tree.seeds_reaching == 0.5  # seed 0 peaks at 0.62, seed 1 at 0.60 < 0.61


def test_bootstrap_reach_ratio_by_hand() -> None:
    """One seed each: the interval collapses to the ratio. Two seeds: the resamples can only be the four
    seed combinations, so the interval's ends are the hand-computed extremes; a method that never gets
    there has an infinite ratio; an interval that holds 1 is not resolved."""
    from benchmarks import common

    def history(label: str, seed: int, nfe: list[int], rewards: list[float]):
        points = [common.EvalPoint(i, n, 0, 0, float(n), r, 0.0) for i, (n, r) in enumerate(zip(nfe, rewards))]
        return common.RunHistory(common.RunSpec(label, label, 1e-3, seed, 12_000), points, 8)

    flat = [history("flat", 0, [0, 100, 200], [0.5, 0.55, 0.60])]
    tree = [history("tree", 0, [0, 50, 100], [0.5, 0.62, 0.63])]
    assert common.bootstrap_reach_ratio(tree, flat, "nfe", rounds=50) == (0.25, 0.25, 0.25)  # 50 NFE / 200 NFE
    flat2 = flat + [history("flat", 1, [0, 100, 200], [0.5, 0.70, 0.70])]
    # resamples of flat: {0,0}: target .60 reached at 200; {1,1}: .70 at 100; {0,1}: .65 (mean curve .625, .65) at 200
    # tree reaches .60 and .65? .63 < .65: never; .70: never -> the ratios are 50/200 = 0.25 or inf
    ratio, low, high = common.bootstrap_reach_ratio(tree, flat2, "nfe", rounds=400, seed=1)
    assert ratio == math.inf and low == 0.25 and high == math.inf
    assert not common.resolved(low, high) and common.resolved(0.2, 0.9) and common.resolved(1.1, 3.0)
    assert common.bootstrap_reach_ratio(flat, flat, "seconds", rounds=10)[1:] == (1.0, 1.0)


@pytest.mark.parametrize("ablation, labels", [
    ("shape", {"k3w3", "k2w3", "k2w4", "k4w3", "k3w3 x2 trees"}),
    ("window", {"geometric r=0.5", "geometric r=0.3", "fixed start 0", "shifting 1/25 it"}),
])
def test_efficiency_ablations_json(tmp_path: Path, ablation: str, labels: set[str]) -> None:
    from benchmarks import efficiency
    efficiency.main([*TINY_TOY, "--ablation", ablation, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / f"ablation_{ablation}_toy.json").read_text())
    assert {row["label"] for row in saved["reach"]} == labels
    leaves = {run["spec"]["label"]: run["leaves_per_prompt"] for run in saved["runs"]}
    if ablation == "shape":
        assert leaves == {"k3w3": 27, "k2w3": 8, "k2w4": 16, "k4w3": 64, "k3w3 x2 trees": 54}


def test_the_evaluation_grid_does_not_change_a_shapes_run(tmp_path: Path) -> None:
    """--reuse keys runs by spec without the grid: evaluating more often must leave training bit for bit the same
    (flat GRPO's SDE rollouts are the most sensitive: a 1e-7 change moves its final reward by tenths)."""
    from benchmarks.common import RunSpec
    from benchmarks.shapes_task import ShapesProtocol, run_shapes

    spec = RunSpec("flow_grpo", "flow_grpo", 1e-3, 0, 128, {"tree": {"trees": 2}})
    finals = []
    for points in (1, 4):
        history = run_shapes(spec, ShapesProtocol(prompts_per_iteration=2, eval_prompts=4, eval_points=points, steps=4),
                             tmp_path / str(points))
        assert len(history.points) == points + 1 and history.evaluation == {"points": points, "size": 4}
        finals.append((history.final.iteration, history.final.reward))
    assert finals[0] == finals[1] and finals[0][0] == 4
    assert finals[0][1] != history.points[0].reward  # training moved the policy


def test_efficiency_on_the_shapes_task(tmp_path: Path) -> None:
    """The built-in task through the real trainer: every run stays in budget, rollout NFE = closed form."""
    from benchmarks import efficiency
    efficiency.main(["--task", "shapes", "--methods", "treegrpo", "flow_grpo", "--flat-trees", "3", "--seeds", "0",
                     "--lrs", "1e-3", "--budget", "240", "--prompts", "2", "--eval-points", "2", "--eval-prompts", "4",
                     "--steps", "4", "--threads", "1", "--quiet", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "efficiency_shapes.json").read_text())
    assert {row["label"] for row in saved["reach"]} == {"treegrpo", "flow_grpo"}
    for run in saved["runs"]:
        spec, points = run["spec"], run["points"]
        config = preset(spec["method"], **spec["overrides"])
        iterations = points["iteration"][-1]
        iteration_plans = [plan_for_iteration(config.tree, 4, i, 0) for i in range(iterations)]
        assert iterations >= 2 and points["rollout_nfe"][-1] + points["training_nfe"][-1] <= 240
        assert points["rollout_nfe"][-1] == sum(2 * config.tree.trees * plans.rollout_nfe_per_tree(p) for p in iteration_plans)
        assert points["reward"][0] == saved["runs"][0]["points"]["reward"][0]  # same base, prompts, noise
    leaves = {run["spec"]["label"]: run["leaves_per_prompt"] for run in saved["runs"]}
    assert leaves == {"treegrpo": 27, "flow_grpo": 3}


@pytest.mark.parametrize("method, expected", [("mix_grpo", {"tree": {"window": 2}}),
                                              ("branch_grpo", {"tree": {"split_steps": [0, 1, 2, 3]}}),
                                              ("treegrpo", {})])
def test_shapes_task_adapts_long_schedules_to_four_steps(method: str, expected: dict[str, object]) -> None:
    from benchmarks import shapes_task

    assert shapes_task.adapt_to_steps(method, 4) == expected
    assert shapes_task.dotted({"tree": {"split_steps": [0, 1], "k": 2}}) == ["tree.split_steps=[0,1]", "tree.k=2"]


def test_shapes_ablations_need_more_than_four_steps(tmp_path: Path) -> None:
    """At 4 steps k2w4 does not fit (a window may not touch the last step); at 6 every ablation variant does."""
    from benchmarks import efficiency
    from benchmarks import shapes_task
    from benchmarks.common import RunSpec

    from treegrpo.config import ConfigError

    k2w4 = next(v for v in efficiency.shape_variants() if v[0] == "k2w4")
    spec = RunSpec(k2w4[0], k2w4[1], 1e-3, 0, 1000, k2w4[2])
    with pytest.raises(ConfigError, match="tree.window <= 3"):
        shapes_task.shapes_config(spec, shapes_task.ShapesProtocol(steps=4), tmp_path)
    for label, method, overrides in efficiency.shape_variants() + efficiency.window_variants():
        cfg = shapes_task.shapes_config(RunSpec(label, method, 1e-3, 0, 1000, overrides), shapes_task.ShapesProtocol(steps=6), tmp_path)
        assert cfg.sampling.steps == 6
        starts = {plans.window_start(e, 6, cfg.tree.window, cfg.tree.window_placement, start=cfg.tree.window_start,
                                 shift=cfg.tree.shift, shift_every=cfg.tree.shift_every,
                                 geometric_ratio=cfg.tree.geometric_ratio, seed=0) for e in range(60)}
        assert len(starts) > 1 or cfg.tree.window_placement == "fixed", label  # the window has room to move


def test_stabiliser_ablation_adds_one_setting_each_and_reuses_the_main_treegrpo_runs(tmp_path: Path) -> None:
    from benchmarks import efficiency
    from benchmarks import shapes_task
    from benchmarks.common import RunSpec

    protocol = ["--task", "shapes", "--set", "train.parents_per_batch=null", "train.edges_per_batch=32", "treegrpo:tree.k=8", "treegrpo:tree.window=1"]
    ablation, reference = efficiency.variants_for(efficiency.parse_args([*protocol, "--ablation", "stabilisers"]))
    main, _ = efficiency.variants_for(efficiency.parse_args(protocol))
    assert reference == "treegrpo" and ablation[0] == next(v for v in main if v[0] == "treegrpo")  # same spec: reused

    def config(variant: tuple) -> object:
        return shapes_task.shapes_config(RunSpec(variant[0], variant[1], 3e-4, 0, 40_000, variant[2]),
                                         shapes_task.ShapesProtocol(steps=8), tmp_path)

    def flat(cfg: object) -> dict[str, object]:
        from treegrpo.config import config_values

        values = config_values(cfg)
        return {f"{s}.{k}": v for s in ("tree", "advantage", "loss") for k, v in values[s].items()}

    base = flat(config(ablation[0]))
    assert base["tree.k"] == 8 and base["tree.window"] == 1
    changed = {label: {k for k, v in flat(config((label, m, o))).items() if v != base[k]} for label, m, o in ablation[1:]}
    assert changed == {
        "ratio_norm": {"loss.ratio_norm"}, "step_reweight": {"loss.step_reweight"},
        "depth_scale": {"advantage.depth_scale"}, "kl 0.04": {"loss.kl_beta"}, "antithetic": {"tree.antithetic"},
        "component_norm": {"advantage.component_norm"}, "2 trees x k4": {"tree.k", "tree.trees"},
        "2 trees x k4, sibling baseline": {"tree.k", "tree.trees", "advantage.baseline"},
    }  # a variant's own tree.k wins over --set's


def test_shapes_settings_and_schedule_horizon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--set reaches every run's spec and config; lr schedules decay over the iterations that fit the budget."""
    from benchmarks import efficiency
    from benchmarks import shapes_task
    from benchmarks.common import RunSpec

    args = efficiency.parse_args(["--task", "shapes", "--methods", "treegrpo", "flow_grpo",
                                  "--set", "train.lr_schedule=cosine", "loss.kl_beta=0", "treegrpo:train.warmup=3"])
    variants, _ = efficiency.variants_for(args)
    assert variants[0] == ("treegrpo", "treegrpo", {"train": {"lr_schedule": "cosine", "warmup": "3"},
                                                    "loss": {"kl_beta": "0"}})
    assert variants[1] == ("flow_grpo", "flow_grpo", {"tree": {"trees": 27}, "train": {"lr_schedule": "cosine"},
                                                      "loss": {"kl_beta": "0"}})
    # 4 steps, 8 prompts, 30k NFE: 70 TreeGRPO iterations (424 NFE each) and 17 flat ones (1728), as measured
    expected = {"treegrpo": 70, "flow_grpo": 17}
    for label, method, overrides in variants:
        cfg = shapes_task.shapes_config(RunSpec(label, method, 1e-3, 0, 30_000, overrides), shapes_task.ShapesProtocol(steps=4),
                                        tmp_path)
        assert cfg.train.lr_schedule == "cosine" and cfg.train.iterations == expected[label]
    for bad in ("lr_schedule", "treegrpp:train.warmup=3"):
        with pytest.raises(SystemExit, match=r"must look like \[method:\]section.key=value"):
            efficiency.variants_for(efficiency.parse_args(["--task", "shapes", "--set", bad]))
    for bad, message in ((["--set", "train.lr_schedule=cosine"], "--set applies to --task shapes only"),
                         (["--reuse", str(tmp_path / "missing.json")], "missing.json: no such file")):
        with pytest.raises(SystemExit) as error:
            efficiency.parse_args(bad)
        assert error.value.code == 2 and message in capsys.readouterr().err


def test_toy_runner_follows_train_toy() -> None:
    from benchmarks import common
    task = ToyTask()
    base = pretrain_toy(task, steps=30, seed=0)
    for method, overrides in (("treegrpo", {}), ("flow_grpo", {"tree": {"trees": 3}})):
        reference = train_toy(ToyRunConfig(method=method, iterations=3, lr=3e-3, prompts_per_iteration=2,
                                           eval_samples=32, method_overrides=overrides), task, base)
        protocol = common.ToyProtocol(prompts_per_iteration=2, eval_samples=32, eval_points=10**6, max_iterations=3)
        history = common.run_toy(common.RunSpec(method, method, 3e-3, 0, 10**6, overrides), protocol, task, base)
        assert [p.reward for p in history.points] == reference["reward"]
        assert history.final.rollout_nfe == sum(reference["rollout_nfe"])
        assert history.final.training_nfe == sum(reference["training_nfe"])


def test_gpu_iteration_tiny_on_cpu(tmp_path: Path) -> None:
    from benchmarks import gpu_iteration as gpu
    payload = gpu.main(["--size", "tiny", "--device", "cpu", "--dtype", "fp32", "--prompts", "1", "--warmup", "0",
                        "--iterations", "1", "--flop-repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_iteration_tiny.json").read_text())
    assert saved["table"] == payload["table"]
    results = {r["method"]: r for r in saved["results"]}
    assert set(results) == {"treegrpo", "dance_grpo"}
    tree, dance = results["treegrpo"], results["dance_grpo"]
    # k3w3 with the window at steps 0-2: 1 + 3 + 9 branching evaluations, then 27 leaves x 7 ODE steps
    tree_plan = plans.tree_plan(10, 3, 3, 0)
    assert tree["rollout_nfe"] == tree["rollout_nfe_closed_form"] == plans.rollout_nfe_per_tree(tree_plan) == 202
    assert tree["training_nfe"] == tree["training_nfe_closed_form"] == plans.training_nfe_per_tree(tree_plan) == 13
    assert dance["rollout_nfe"] == dance["rollout_nfe_closed_form"] == 27 * 10
    assert dance["training_nfe"] == dance["training_nfe_closed_form"] == 27 * 6
    assert tree["leaves_per_prompt"] == dance["leaves_per_prompt"] == 27
    for result in (tree, dance):
        for key in ("rollout_s", "decode_reward_s", "training_s", "total_s", "peak_memory_gb", "optimizer_steps"):
            assert key in result
        assert result["extra"]["minibatch_flops"] > 0 and result["extra"]["mfu"] > 0


def test_gpu_iteration_trains_every_edge_of_a_random_bf16_model(tmp_path: Path) -> None:
    """Random Wan weights in bf16 decode to near-identical clips (as on the H200, where this run first trained nothing):
    the benchmark's jitter keeps the rewards above the zero-spread guard, so the timed update is a whole one."""
    from benchmarks import gpu_iteration as gpu
    payload = gpu.main(["--size", "wan_tiny", "--device", "cpu", "--dtype", "bf16", "--prompts", "1", "--warmup", "0",
                        "--methods", "treegrpo", "--flop-repeats", "1"])
    (tree,) = payload["results"]
    assert tree["training_nfe"] == tree["training_nfe_closed_form"] == 13


def test_gpu_iteration_24gb_recipe_options_on_a_tiny_flux(tmp_path: Path) -> None:
    """The FLUX.1-dev 24 GB recipe's options (float8 weights, checkpointing, reward offload, attention kernels) run."""
    from benchmarks import gpu_iteration as gpu
    payload = gpu.main(["--size", "flux_dev_tiny", "--device", "cpu", "--dtype", "bf16", "--prompts", "1", "--warmup", "0",
                        "--methods", "treegrpo", "--flop-repeats", "1", "--train", "lora", "--gradient-checkpointing",
                        "--reward-offload", "--storage-dtype", "fp8_e4m3", "--guidance", "3.5", "--train-batch", "2",
                        "--sdpa-kernels", "flash", "efficient", "math"])
    (tree,) = payload["results"]
    assert tree["training_nfe"] == tree["training_nfe_closed_form"] == 13
    assert payload["trainable_parameters"] < payload["transformer_parameters"]


def test_gpu_levers_tiny_on_cpu(tmp_path: Path) -> None:
    from benchmarks import gpu_levers as levers
    rows = levers.main(["--size", "tiny", "--device", "cpu", "--dtype", "fp32", "--prompts", "1", "--repeats", "1",
                        "--train-batches", "2", "4", "--rollout-rows", "2", "--train", "lora", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_levers_tiny.json").read_text())
    assert saved["args"]["train"] == "lora"  # a gpu_iteration option, not taken for --train-batches
    assert [(r["lever"], r["setting"]) for r in saved["rows"]] == [(r["lever"], r["setting"]) for r in rows] == [
        ("train", "2 parents"), ("train", "4 parents"), ("rollout", "2 latents"),
        ("adamw", "for-loop"), ("adamw", "foreach"), ("adamw", "fused")]
    train = [r for r in rows if r["lever"] == "train"]
    assert train[1]["flops"] == pytest.approx(2 * train[0]["flops"], rel=0.05)  # twice the parents, twice the FLOPs


def test_device_session_gpu_benchmark_options_parse() -> None:
    """Every run_bench line of the GPU session script parses with its script's own options."""
    text = (BENCHMARKS / "device_session.sh").read_text().replace("\\\n", " ")
    calls = [line.split(None, 4) for line in text.splitlines() if line.startswith("run_bench ")]
    assert {c[1] for c in calls} == {"gpu_iteration", "gpu_levers"} and len(calls) >= 4
    from benchmarks import gpu_iteration, gpu_levers

    for _, script, _, _, options in calls:
        words = ["--device", "cuda", "--dtype", "bf16", *options.replace('"$work/results', "/tmp").replace('"', "").split()]
        {"gpu_iteration": gpu_iteration, "gpu_levers": gpu_levers}[script].parse_args(words)


def test_shapes_headroom_best_of_k_skips_prompts_without_the_component(tmp_path: Path) -> None:
    from benchmarks import shapes_headroom as headroom
    nan = float("nan")
    grid = torch.tensor([[0.0, 1.0, 0.0, 0.0], [nan, nan, nan, nan], [0.5, 0.5, 0.5, 0.5]])
    stats = headroom.summarize(grid)
    assert stats["mean"] == pytest.approx(3.0 / 8)  # (0 + 1 + 0 + 0 + 4 x 0.5) / 8
    assert stats["best_of_4"] == pytest.approx(0.75)  # (1 + 0.5) / 2, the NaN prompt left out
    assert stats["within_prompt_std"] == pytest.approx(0.25)  # (0.5 + 0) / 2, unbiased std of [0, 1, 0, 0]
    payload = headroom.main(["--prompts", "2", "--k", "2", "--groups", "relation", "--out", str(tmp_path / "h.json")])
    relation = json.loads((tmp_path / "h.json").read_text())["groups"]["relation"]
    assert relation == payload["groups"]["relation"] and relation["prompts"] == 2
    assert all(v["best_of_2"] >= v["mean"] - 1e-6 for k, v in relation.items() if k != "prompts")


def test_shapes_headroom_tree_groups_each_trees_leaves_by_prompt() -> None:
    from benchmarks import shapes_headroom as headroom
    prompts = ["a red circle to the left of a blue square", "two green triangles", "one yellow square"]
    # without noise in the window a tree's leaves are one image: no spread within a prompt, best = mean;
    # leaves of different prompts mixed into one row would show a spread
    backbone = headroom.base_backbone(None)
    still = headroom.tree_headroom(backbone, prompts, k=2, window=2, start=0, noise=0.0, seed=0)
    assert all(v["within_prompt_std"] == pytest.approx(0.0, abs=1e-6) for v in still.values())
    assert still["total"]["best_of_4"] == pytest.approx(still["total"]["mean"], abs=1e-6)
    moving = headroom.tree_headroom(backbone, prompts, k=2, window=2, start=0, noise=1.0, seed=0)
    assert moving["total"]["within_prompt_std"] > 0.0


def test_shapes_components_split_the_runs_own_evaluation_by_group(tmp_path: Path) -> None:
    from benchmarks import shapes_components as components
    payload = components.main(["base", "--prompts", "12", "--out", str(tmp_path / "c.json")])
    base = json.loads((tmp_path / "c.json").read_text())["models"]["base"]
    assert base["all"] == pytest.approx(base["eval_score"], abs=1e-6)  # the run's eval/score, recomputed from components
    groups = [g for g in ("one_object", "count", "relation") if g in base]
    assert sum(base[g]["prompts"] for g in groups) == 12 == payload["prompts"]
    weighted = sum(base[g]["prompts"] * base[g]["total"] for g in groups) / 12
    assert weighted == pytest.approx(base["all"], abs=1e-6)
    assert "position" not in base.get("count", {})  # counts have no position component


def test_gradient_by_depth_summary_hand_worked_and_a_tiny_run(tmp_path: Path) -> None:
    from benchmarks import gradient_by_depth as grad
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    rows = grad.summarize([{1: (t(1.0, 0.0), 2), 2: (t(1.0, 1.0), 4)}, {1: (t(0.0, 3.0), 2), 2: (t(2.0, 2.0), 6)}])
    one, two = rows
    assert (one["depth"], one["edges_per_rollout"], two["edges_per_rollout"]) == (1, 2, 5)
    assert one["grad_norm"] == pytest.approx(2.0) and one["cosine_between_rollouts"] == pytest.approx(0.0)
    assert one["norm_of_mean_over_mean_norm"] == pytest.approx((0.25 + 2.25) ** 0.5 / 2.0)  # |(0.5, 1.5)| / 2
    assert two["cosine_between_rollouts"] == pytest.approx(1.0) and two["norm_of_mean_over_mean_norm"] == pytest.approx(1.0)
    assert math.isnan(one["cosine_se"])  # two rollouts: no jackknife
    # Jackknife by hand: three unit vectors at 0, 90 and 180 degrees; pair cosines 0, -1, 0 -> mean -1/3;
    # leaving out each: -1 (keeps 0 and 180), 0, 0 -> mean -1/3, se = sqrt(2/3 * (4/9 + 1/9 + 1/9)).
    vectors = [t(1.0, 0.0), t(0.0, 1.0), t(-1.0, 0.0)]
    assert grad.mean_pairwise_cosine(vectors) == pytest.approx(-1 / 3)
    assert grad.jackknife_se(vectors) == pytest.approx((2 / 3 * 6 / 9) ** 0.5)
    payload = grad.main(["--rollouts", "2", "--prompts", "2", "--window", "2", "--out", str(tmp_path / "g.json")])
    depths = [row["depth"] for row in json.loads((tmp_path / "g.json").read_text())["depths"]]
    assert depths == [row["depth"] for row in payload["depths"]] and set(depths) <= {1, 2} and depths
    assert all(row["grad_norm"] > 0 for row in payload["depths"])


def test_device_session_script_parses_and_its_protocol_options_are_valid() -> None:
    """The GPU session script runs unattended on a short lease: a syntax error or a stale option would waste it."""
    script = BENCHMARKS / "device_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    call = text[text.index("-m benchmarks.efficiency") + len("-m benchmarks.efficiency"):text.index('--out "$work/results/protocol"')]
    words = call.replace("\\\n", " ").split()
    from benchmarks import efficiency
    args = efficiency.parse_args([*words, "--out", "unused"])
    assert args.task == "shapes" and args.jobs == 8 and "model.device=cuda" in args.settings


def test_benchmarks_are_a_package_that_imports_nothing_from_tests() -> None:
    """Run as ``python -m benchmarks.<script>``: siblings by package name, test doubles from ``treegrpo.testing``."""
    assert (BENCHMARKS / "__init__.py").is_file()
    for file in sorted(BENCHMARKS.glob("*.py")):
        text = file.read_text(encoding="utf-8")
        assert "sys.path" not in text, file.name
        assert not re.search(r"^\s*(from tests\b|import tests\b)", text, re.MULTILINE), file.name
