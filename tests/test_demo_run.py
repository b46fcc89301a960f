"""``treegrpo demo`` end to end through the real CLI entry (shortened: 2 iterations, 16 eval prompts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from treegrpo import cli
from treegrpo.demo import run as demo
from treegrpo.demo.evaluate import BASE_DIR
from treegrpo.trainer.evaluation import grid_cells

needs_base = pytest.mark.skipif(not (BASE_DIR / "model_index.json").exists(), reason="demo base not present")


@needs_base
def test_short_demo_writes_every_promised_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli.main([
        "demo", "--iterations", "2", "--eval-prompts", "16", "--seed", "3", "--output-dir", str(out), "--threads", "1",
        "data.prompts_per_iteration=2", "tree.k=2",
    ])
    assert code == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    # quiet: no bar without a terminal, no per-iteration lines; one short line per evaluation (base and trained)
    progress = [line for line in captured.err.splitlines() if line.strip()]
    assert len(progress) == 2 and all("held-out" in line and ", judge 0." in line for line in progress), progress
    line = lines[0]
    change = r"(\d\.\d+) \+- \d\.\d+ -> (\d\.\d+) \+- \d\.\d+ \([+-]\d\.\d+\)"
    preference = re.search(r"held-out \(16 samples, 8 steps\): shapes_style " + change, line)
    judge = re.search(r"\), judge shapes " + change + "; with 16 steps", line)
    assert preference and judge, line
    assert re.search(r"; with 16 steps \(16 samples\): shapes_style " + change + ", judge shapes " + change, line), line
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "tensorboard", "checkpoints", "final",
                 "before_after.png", "report.png", "demo.json", "README.md"):
        assert (out / name).exists(), name
        assert str(out) in line
    assert list((out / "tensorboard").iterdir())
    assert list((out / "checkpoints").glob("step-000002"))
    assert list((out / "final").iterdir())
    trees = sorted((out / "trees").glob("step-*.png"))
    assert trees and str(trees[-1]) in line
    assert str(out / "before_after.png") in line and str(out / "report.png") in line
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2]
    summary = json.loads((out / "demo.json").read_text())
    assert summary["eval_prompts"] == 16 and summary["seed"] == 3
    for found, key in ((preference, "eval/shapes_style"), (judge, "eval/judge/shapes")):
        assert float(found.group(1)) == pytest.approx(evals[0][key], abs=5e-4)
        assert float(found.group(2)) == pytest.approx(evals[-1][key], abs=5e-4)
    assert evals[0]["eval/judge/shapes"] == evals[0]["eval/shapes"]  # the judge is the compositional reward alone
    assert evals[0]["eval/score"] == pytest.approx(evals[0]["eval/shapes"] + evals[0]["eval/shapes_style"], abs=1e-6)
    assert {"eval/steps16/shapes_style_se", "eval/steps16/judge/shapes", "eval/shapes_style_se"} <= set(evals[-1])

    # before_after.png's crops are the evaluated images: re-scored from the PNG they give the eval's mean
    from treegrpo.config import load_config
    from treegrpo.data import load_prompt_sets
    from treegrpo.demo.reward import ShapesReward
    from treegrpo.demo.style import ShapesStyleReward

    cfg = load_config(out / "config.yaml")
    prompts = load_prompt_sets(cfg.data, cfg.seed).eval
    cells = grid_cells(out / "samples/step-000000.png", len(prompts), len(prompts))
    assert float(ShapesReward()(cells, prompts).mean()) == pytest.approx(evals[0]["eval/judge/shapes"], abs=0.02)
    assert float(ShapesStyleReward()(cells, prompts).mean()) == pytest.approx(evals[0]["eval/shapes_style"], abs=0.02)

    # the README's three lines load the trained LoRA onto the shipped base in plain diffusers
    readme = (out / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    assert "builtin:shapes" not in code and str(demo.lora_snippet(out)) in code
    namespace: dict = {}
    exec(demo.lora_snippet(out), namespace)  # noqa: S102 - the snippet we print
    pipe = namespace["pipe"]
    assert "default_0" in pipe.get_list_adapters().get("transformer", []) or pipe.get_list_adapters()


def test_result_line_reports_the_preference_and_the_judge_or_the_hard_variants_reward() -> None:
    from argparse import Namespace

    cfg = demo.demo_config(Namespace(method="treegrpo", eval_prompts=64, iterations=3, minutes=None, eval_points=1,
                                     output_dir="unused", seed=0, overrides=[]))
    record = lambda style, shapes: {  # noqa: E731
        "eval/shapes": shapes, "eval/shapes_se": 0.01, "eval/shapes_style": style, "eval/shapes_style_se": 0.02,
        "eval/score": shapes + style, "eval/score_se": 0.03, "eval/judge/shapes": shapes, "eval/judge/shapes_se": 0.01,
        "eval/judge_score": shapes, "eval/judge_score_se": 0.01,
        "eval/steps16/shapes_style": style + 0.1, "eval/steps16/shapes_style_se": 0.02,
        "eval/steps16/judge/shapes": shapes - 0.1, "eval/steps16/judge/shapes_se": 0.01}
    line = demo.result_line(cfg, record(0.5, 0.8), record(0.75, 0.79), 3, 1.25)
    assert line == ("held-out (64 samples, 8 steps): shapes_style 0.500 +- 0.020 -> 0.750 +- 0.020 (+0.250), "
                    "judge shapes 0.800 +- 0.010 -> 0.790 +- 0.010 (-0.010); with 16 steps (64 samples): "
                    "shapes_style 0.600 +- 0.020 -> 0.850 +- 0.020 (+0.250), judge shapes 0.700 +- 0.010 -> 0.690 +- 0.010 "
                    "(-0.010); 3 treegrpo iterations in 1.2 min")
    hard = {k: v for k, v in record(0.5, 0.8).items() if "style" not in k}
    assert demo.reported_rewards(hard) == (["shapes"], [])  # reward=shapes: the trained reward is the judge, once


def test_grid_cells_invert_the_sample_grid(tmp_path: Path) -> None:
    import torch

    from treegrpo.trainer.evaluation import image_grid, save_png

    images = torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    save_png(image_grid(images, 4), tmp_path / "grid.png")  # 11 images: 4 columns, as for 11 eval prompts
    cells = grid_cells(tmp_path / "grid.png", 11, 11)
    assert cells.shape == images.shape and (cells - images).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_demo_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    for argv in (["--iterations", "0"], ["--eval-prompts", "0"], ["--method", "treegrp"], ["tree.k"]):
        assert cli.main(["demo", "--output-dir", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], err
    assert not out.exists()


def test_minutes_are_a_wall_clock_budget_for_the_trainer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = demo.build_parser().parse_args(["--minutes", "20", "--eval-points", "4"])
    cfg = demo.demo_config(args, minutes_used=0.5)
    budget = 20 - 0.5 - demo.SUMMARY_MINUTES
    assert cfg.train.max_minutes == pytest.approx(budget, abs=1e-3)
    assert cfg.train.eval_every_minutes == pytest.approx(budget / 7, abs=1e-3)
    assert cfg.train.iterations == demo.MAX_ITERATIONS
    default = demo.demo_config(demo.build_parser().parse_args([]))
    assert default.train.max_minutes == pytest.approx(demo.DEFAULT_MINUTES - demo.SUMMARY_MINUTES, abs=1e-3)
    assert default.method == "treegrpo" and default.model.path == "builtin:shapes"
    fixed = demo.demo_config(demo.build_parser().parse_args(["--iterations", "10"]))
    assert fixed.train.iterations == 10 and fixed.train.max_minutes == 0 and fixed.train.eval_every == 2
    assert cli.main(["demo", "--minutes", "0.2", "--output-dir", str(tmp_path / "late")]) == 2
    assert "leaves no time to train" in capsys.readouterr().err


def test_verbose_reaches_the_demo_from_either_side_of_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(demo, "main", lambda argv: seen.append(list(argv)) or 0)
    for words in (["--verbose", "demo", "--seed", "1"], ["demo", "--seed", "1", "-v"], ["demo", "--seed", "1"]):
        assert cli.main(words) == 0
    assert seen == [["--seed", "1", "--verbose"], ["--seed", "1", "-v"], ["--seed", "1"]]
    assert demo.build_parser().parse_args(["-v"]).verbose and not demo.build_parser().parse_args([]).verbose


def test_report_draws_each_reward_and_judge_once_and_flags_the_more_steps_check() -> None:
    from treegrpo.report import held_out_series

    demo_record = {"eval/shapes": 0.8, "eval/shapes_se": 0.01, "eval/shapes_style": 0.5, "eval/score": 1.3,
                   "eval/judge/shapes": 0.8, "eval/judge_score": 0.8, "eval/steps16/shapes_style": 0.6,
                   "eval/steps16/judge/shapes": 0.81, "eval/steps16/shapes": 0.81, "eval/steps16/score": 1.4,
                   "eval/steps16/judge_score": 0.81}
    assert held_out_series([demo_record]) == [
        ("eval/judge/shapes", "judge shapes", False), ("eval/shapes_style", "shapes_style", False),
        ("eval/steps16/judge/shapes", "judge shapes (16 steps)", True),
        ("eval/steps16/shapes_style", "shapes_style (16 steps)", True)]
    # one reward, no judge: its own line (the total equals it and is left out); the total alone is kept
    assert held_out_series([{"eval/hpsv2": 0.3, "eval/score": 0.3}]) == [("eval/hpsv2", "hpsv2", False)]
    assert held_out_series([{"eval/score": 0.3, "eval/score_se": 0.01}]) == [("eval/score", "score", False)]
