"""The wall-clock budget: measured while running, the run stops before an iteration that would not fit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import treegrpo.trainer.budget as budget_module
from tests.test_trainer import tiny_values
from treegrpo.config import resolve_config
from treegrpo.trainer import train
from treegrpo.trainer.budget import TimeBudget


def test_fits_counts_the_slowest_recent_iteration_and_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(budget_module.time, "time", lambda: now[0])
    budget = TimeBudget(1.0, start=1000.0)  # deadline at 1060
    assert budget.fits(iterations=1)  # nothing measured yet
    for seconds in (5.0, 9.0, 6.0, 7.0):  # the last three are 9, 6, 7: the estimate is 9
        budget.record_iteration(seconds)
    budget.record_evaluation(10.0)
    budget.record_evaluation(4.0)  # the estimate stays 10
    now[0] = 1041.0
    assert budget.fits(iterations=1)  # 1041 + 9 + 10 = 1060
    assert not budget.fits(iterations=1, evaluations=1)  # + 10 more
    now[0] = 1041.5
    assert not budget.fits(iterations=1)
    assert not TimeBudget(0.0, start=0.0).limited and TimeBudget(0.0, start=0.0).fits(iterations=10**9)


def test_a_run_with_a_time_budget_stops_early_and_still_evaluates_and_exports(tmp_path: Path) -> None:
    folder = tmp_path / "budget"
    minutes = 0.25
    values = tiny_values(tmp_path, iterations=1000, eval_every=0, checkpoint_every=0, max_minutes=minutes)
    start = time.time()
    train(resolve_config(values, [f"output_dir={folder}"]))
    wall = time.time() - start
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert 1 <= len(records) < 1000
    assert [e["step"] for e in evals] == [0, len(records)]
    assert (folder / "checkpoints" / f"step-{len(records):06d}" / "COMPLETE").exists()
    assert any((folder / "final").iterdir())
    assert wall <= minutes * 60 * 1.25, f"{wall:.1f} s for a {minutes * 60:.0f} s budget"
