"""Rewards in the trainer: chunks scored while the next chunk is sampled, and held-out judges."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

import treegrpo.trainer.loop
from tests.test_trainer import tiny_values
from treegrpo.config import ConfigError, resolve_config
from treegrpo.trainer import Trainer, train


class WaitingReward:
    """Scores chunk 0 only once the rollout of chunk 1 has started (a sequential loop would never get there)."""

    abstaining: frozenset[str] = frozenset()  # no remote reward: a NaN would be a fault

    def __init__(self, second_chunk_started: threading.Event) -> None:
        self.second_chunk_started = second_chunk_started
        self.waited: list[bool] = []

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.waited:
            self.waited.append(self.second_chunk_started.wait(timeout=60))
        scores = images.mean(dim=(1, 2, 3))
        return scores, {"mean": scores}


def test_a_chunk_is_scored_while_the_next_one_is_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    calls: list[int] = []
    original = treegrpo.trainer.loop.rollout_trees

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            started.set()
        return original(*args, **kwargs)

    monkeypatch.setattr(treegrpo.trainer.loop, "rollout_trees", counted)
    cfg = resolve_config(tiny_values(tmp_path), [f"output_dir={tmp_path / 'run'}", "sampling.reward_chunks=2"])
    reward = WaitingReward(started)
    trainer = Trainer(cfg, run_dir=tmp_path / "run", rewards=reward)  # type: ignore[arg-type]
    result = trainer.run_iteration(0)
    assert reward.waited == [True]
    assert len(calls) == 2
    trees = cfg.data.prompts_per_iteration * cfg.tree.trees
    assert result.rollout.structure.num_trees == trees and result.scores.shape[0] == trees * 4  # k2 w2: 4 leaves a tree
    assert result.metrics["rollout_nfe"] == 2 * (1 + 2 + 4 + 4)  # two trees, window at steps 0-1: 1, 2, 4, 4 nodes


def test_held_out_judges_are_evaluated_and_logged(tmp_path: Path) -> None:
    folder = tmp_path / "judged"
    values = tiny_values(tmp_path, iterations=1, eval_every=0)
    values["eval"] = {"rewards": {"jpeg_incompressibility": 1.0}}
    train(resolve_config(values, [f"output_dir={folder}"]))
    records = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    for record in records:
        assert record["eval/judge/jpeg_incompressibility"] == pytest.approx(record["eval/judge_score"], abs=1e-6)
        assert record["eval/jpeg_compressibility"] == pytest.approx(record["eval/score"], abs=1e-6)
        assert record["eval/judge_score_se"] > 0 and record["eval/score_se"] > 0
    with pytest.raises(ConfigError, match="unknown reward 'jpegg'"):
        resolve_config(tiny_values(tmp_path), ["eval.rewards=jpegg"])
