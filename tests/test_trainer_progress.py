"""What a run shows: the run's bar on a terminal, one line per evaluation in a quiet log, nothing twice."""

from __future__ import annotations

import io
import logging

import pytest

from treegrpo.config import ConfigError, TrainConfig
from treegrpo.config import Progress
from treegrpo.trainer.progress import RunProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def quiet_logger():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("treegrpo")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield logger
    logger.setLevel(level)


def test_the_bar_counts_iterations_and_shows_reward_and_held_out_score() -> None:
    stream = Terminal()
    progress = RunProgress(enabled=True, iterations=10, budget_minutes=0.0, start_iteration=0, stream=stream)
    with progress.shown():
        progress.evaluation(0, {"eval/score": 0.5, "eval/score_se": 0.01})
        progress.iteration(3, 0.625)
    text = stream.getvalue()
    assert "3/10" in text and "reward 0.625" in text and "held-out 0.500 +- 0.010" in text


def test_a_time_budget_bar_counts_minutes() -> None:
    stream = Terminal()
    progress = RunProgress(enabled=True, iterations=100_000, budget_minutes=8.75, start_iteration=0, stream=stream)
    with progress.shown():
        progress.iteration(1, 0.5)
    text = stream.getvalue()
    assert "/8.8 min" in text and "it 1" in text and "100000" not in text


def test_a_quiet_log_gets_one_line_per_evaluation(quiet_logger: logging.Logger) -> None:
    stream = io.StringIO()
    progress = RunProgress(enabled=True, iterations=10, budget_minutes=0.0, start_iteration=0, stream=stream)
    with progress.shown():
        progress.evaluation(0, {"eval/score": 0.5, "eval/score_se": 0.01})
        progress.iteration(1, 0.6)
        progress.evaluation(1, {"eval/score": 0.55})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "iteration 0  held-out 0.500 +- 0.010" in lines[0] and lines[1].endswith("0.550")


def test_nothing_is_printed_twice_or_when_disabled(quiet_logger: logging.Logger) -> None:
    quiet_logger.setLevel(logging.INFO)  # the logger's own eval lines already show the run in a log
    stream = io.StringIO()
    progress = RunProgress(enabled=True, iterations=10, budget_minutes=0.0, start_iteration=0, stream=stream)
    progress.evaluation(0, {"eval/score": 0.5})
    quiet_logger.setLevel(logging.WARNING)
    off = RunProgress(enabled=False, iterations=10, budget_minutes=0.0, start_iteration=0, stream=Terminal())
    with off.shown():
        off.evaluation(0, {"eval/score": 0.5})
        off.iteration(1, 0.5)
    assert stream.getvalue() == "" and off.stream.getvalue() == ""  # type: ignore[attr-defined]


def test_progress_setting_takes_its_choices_and_the_old_booleans() -> None:
    for value, expected in ((True, Progress.steps), (False, Progress.none), ("run", Progress.run)):
        cfg = TrainConfig(progress=value)
        cfg.check()
        assert cfg.progress == expected
    with pytest.raises(ConfigError, match="train.progress is 'bars'; use one of steps, run, none"):
        TrainConfig(progress="bars").check()
