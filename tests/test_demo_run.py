"""``treegrpo demo`` end to end through the real CLI entry (shortened: 2 iterations, 16 eval prompts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from treegrpo import cli
from treegrpo.demo import run as demo
from treegrpo.demo.evaluate import BASE_DIR

needs_base = pytest.mark.skipif(not (BASE_DIR / "model_index.json").exists(), reason="demo base not present")


@needs_base
def test_short_demo_writes_every_promised_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli.main([
        "demo", "--iterations", "2", "--eval-prompts", "16", "--seed", "3", "--output-dir", str(out), "--threads", "1",
        "data.prompts_per_iteration=2", "tree.k=2",
    ])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    match = re.search(r"base (\d\.\d+) -> trained (\d\.\d+)", line)
    assert match, line
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "tensorboard", "checkpoints", "final",
                 "before_after.png", "report.png", "demo.json"):
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
    assert float(match.group(1)) == pytest.approx(evals[0]["eval/score"], abs=5e-4)
    assert float(match.group(2)) == pytest.approx(evals[-1]["eval/score"], abs=5e-4)

    # before_after.png's crops are the evaluated images: re-scored from the PNG they give the eval's mean
    from treegrpo.config import load_config
    from treegrpo.data import load_prompt_sets
    from treegrpo.demo.reward import ShapesReward

    cfg = load_config(out / "config.yaml")
    prompts = load_prompt_sets(cfg.data, cfg.seed).eval
    cells = demo.grid_cells(out / "samples/step-000000.png", len(prompts), len(prompts))
    assert float(ShapesReward()(cells, prompts).mean()) == pytest.approx(evals[0]["eval/score"], abs=0.02)


def test_grid_cells_invert_the_sample_grid(tmp_path: Path) -> None:
    import torch

    from treegrpo.trainer.evaluation import image_grid, save_png

    images = torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    save_png(image_grid(images, 4), tmp_path / "grid.png")  # 11 images: 4 columns, as for 11 eval prompts
    cells = demo.grid_cells(tmp_path / "grid.png", 11, 11)
    assert cells.shape == images.shape and (cells - images).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_demo_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    for argv in (["--iterations", "0"], ["--eval-prompts", "0"], ["--method", "treegrp"], ["tree.k"]):
        assert cli.main(["demo", "--output-dir", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error" in err[0], err
    assert not out.exists()


def test_minutes_set_the_iterations() -> None:
    args = demo.build_parser().parse_args(["--minutes", "20"])
    cfg = demo.demo_config(args)
    assert cfg.train.iterations == demo.iterations_for(20) > demo.DEMO_CONFIG["train"]["iterations"]
    assert demo.iterations_for(0.1) == 1
    default = demo.demo_config(demo.build_parser().parse_args([]))
    assert default.train.iterations == demo.DEMO_CONFIG["train"]["iterations"]
    assert default.data.num_eval_prompts >= 256 and default.method == "treegrpo"
    assert default.model.path == "builtin:shapes"
