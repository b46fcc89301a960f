"""A judge that cannot judge never scores (issue 31): a remote reward's NaN means "not scored". The
image is left out of its group's statistics and of training, counted in metrics.jsonl, and a run
whose remote reward scores nothing for ``train.max_unscored_in_a_row`` iterations stops with a
checkpoint and the resume command; ``--resume`` then goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from tests.test_trainer import tiny_values
from treegrpo.config import resolve_config
from treegrpo.runtime.guards import RewardUnavailable
from treegrpo.rewards import register_reward
from treegrpo.trainer import train


class _Judge:
    """Brightness from a "remote" judge that may abstain: NaN on every second image, or all when down."""

    name = "flaky_judge"
    abstains = True
    down = False

    def __init__(self, **options: Any) -> None:
        pass

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = images.mean(dim=(1, 2, 3)).float().cpu()
        if _Judge.down:
            return torch.full_like(scores, float("nan"))
        scores[1::2] = float("nan")
        return scores


register_reward("flaky_judge", _Judge)


def _values(tmp_path: Path, **train_options: Any) -> dict[str, Any]:
    values = tiny_values(tmp_path, iterations=3, eval_every=0, eval_at_start=False, ema=0.0, **train_options)
    values["reward"] = "flaky_judge"
    return values


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_unjudged_images_are_left_out_and_counted_and_the_rest_trains(tmp_path: Path) -> None:
    _Judge.down = False
    run = tmp_path / "run"
    train(resolve_config(_values(tmp_path, debug_dump=True), [f"output_dir={run}"]))
    records = _records(run)
    leaves = 2 * 4  # 2 prompts x k2 w2
    assert [r["reward_unscored"] for r in records] == [leaves // 2] * 3
    assert all(r["nonfinite_skips"] == 0 and r["optimizer_steps"] >= 1 for r in records)
    assert all(r["reward_unscored_in_a_row"] == 0 and r["reward_mean"] == r["reward_mean"] for r in records)
    dump = torch.load(run / "debug" / "step-000001-rank0.pt")
    scores, groups, advantages = dump["all_scores"], dump["all_groups"], dump["leaf_advantages"]
    unscored = torch.isnan(scores)
    assert int(unscored.sum()) == leaves // 2 and bool((advantages[unscored] == 0).all())
    for group in groups.unique():  # each group's statistics come from its judged images alone
        judged = scores[(groups == group) & ~unscored]
        torch.testing.assert_close(dump["group_mean"][int(group)], judged.mean())
        torch.testing.assert_close(dump["group_std"][int(group)], judged.std(unbiased=False))
    assert bool((advantages[~unscored] != 0).any())


def test_a_judge_that_stays_down_stops_the_run_with_a_checkpoint_and_resume_goes_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = resolve_config(_values(tmp_path, checkpoint_every=0, max_unscored_in_a_row=2), [f"output_dir={run}"])
    _Judge.down = True
    with pytest.raises(RewardUnavailable) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message and "scored no image in 2 iterations in a row" in message
    assert "treegrpo train --resume" in message and "step-000002" in message
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").is_file() and not (run / "final").exists()
    records = _records(run)
    assert [(r["reward_unscored"], r["reward_unscored_in_a_row"], r["optimizer_steps"]) for r in records] == \
        [(8, 1, 0), (8, 2, 0)]
    _Judge.down = False  # the judge is back: the same run resumes and finishes
    train(cfg, resume=str(run))
    records = _records(run)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["reward_unscored_in_a_row"] == 0
    assert records[-1]["optimizer_steps"] >= 1 and (run / "final").is_dir()


def test_the_cli_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from treegrpo.cli import _stopped

    error = RewardUnavailable(5, 3, Path("RUN/checkpoints/step-000005"), "treegrpo train --resume RUN")
    assert _stopped("train", error) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("treegrpo train: error: stopped after step 5")
