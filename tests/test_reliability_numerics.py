"""Numerical guards by injection on a tiny SD3 run: a NaN reward, a NaN rollout log-prob, a model_fn
that returns inf during the update, and a loss whose gradient is NaN. Each skips that iteration's
update (the trained weights do not move), is named in metrics.jsonl, and the run goes on; a reward
that stays NaN stops the run after ``train.max_nonfinite_in_a_row`` iterations with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch
from safetensors.torch import load_file

import treegrpo.engine.update
import treegrpo.trainer.loop
from tests.test_trainer import tiny_values
from treegrpo.config import resolve_config
from treegrpo.runtime.guards import NonFiniteError
from treegrpo.rewards import register_reward
from treegrpo.trainer import train

BAD_ITERATION = 2
"""The iteration (1-based) whose quantity the injections poison."""


class _Counter:
    """Which iteration the trainer is in (counts rollouts)."""

    iteration = 0


class _NanReward:
    """Brightness, but NaN for every image of ``BAD_ITERATION`` (or always, with ``always``)."""

    name = "nan_reward"

    def __init__(self, always: bool = False, **options: Any) -> None:
        self.always = always

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores = images.mean(dim=(1, 2, 3)).float().cpu()
        if self.always or _Counter.iteration == BAD_ITERATION:
            scores[::2] = float("nan")
        return scores


register_reward("nan_reward", _NanReward)


def _count_rollouts(monkeypatch: pytest.MonkeyPatch, poison_log_prob: bool = False) -> None:
    original = treegrpo.trainer.loop.rollout_trees

    def counted(*args: Any, **kwargs: Any) -> Any:
        _Counter.iteration += 1
        rollout = original(*args, **kwargs)
        if poison_log_prob and _Counter.iteration == BAD_ITERATION:
            rollout.structure.edge_log_prob[0] = float("nan")
        return rollout

    _Counter.iteration = 0
    monkeypatch.setattr(treegrpo.trainer.loop, "rollout_trees", counted)


def _poisoned_model_fn(monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    original = treegrpo.trainer.loop.update_policy

    def patched(model_fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        if _Counter.iteration != BAD_ITERATION:
            return original(model_fn, *args, **kwargs)
        return original(lambda *inputs: model_fn(*inputs) * value, *args, **kwargs)

    monkeypatch.setattr(treegrpo.trainer.loop, "update_policy", patched)


def _nan_gradient_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    original = treegrpo.engine.update.minibatch_loss

    def patched(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if _Counter.iteration == BAD_ITERATION:  # value unchanged and finite; d sqrt(u)/du at 0 is inf -> NaN grads
            out.loss = out.loss + (0.0 * out.loss).sqrt()
        return out

    monkeypatch.setattr(treegrpo.engine.update, "minibatch_loss", patched)


def _run(tmp_path: Path, reward: Any = "nan_reward", **train_options: Any) -> Path:
    values = tiny_values(tmp_path, iterations=3, eval_every=0, eval_at_start=False, ema=0.0, **train_options)
    values["reward"] = reward
    folder = tmp_path / "run"
    train(resolve_config(values, [f"output_dir={folder}"]))
    return folder


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _trained(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "trained.safetensors"))


@pytest.mark.parametrize(
    ("injection", "quantity"),
    [("nan-reward", "reward"), ("nan-log-prob", "log_prob"), ("nan-model-output", "loss"),
     ("inf-model-output", "grad_norm"), ("nan-gradient", "grad_norm")],
)
def test_a_nonfinite_quantity_skips_that_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, injection: str,
                                               quantity: str, caplog: pytest.LogCaptureFixture) -> None:
    _count_rollouts(monkeypatch, poison_log_prob=injection == "nan-log-prob")
    if injection.endswith("model-output"):  # inf output: log-prob -inf, ratio 0, finite loss, NaN gradient
        _poisoned_model_fn(monkeypatch, float("nan") if injection.startswith("nan") else float("inf"))
    if injection == "nan-gradient":
        _nan_gradient_loss(monkeypatch)
    run = _run(tmp_path, reward={"nan_reward": {"always": False}} if injection == "nan-reward" else "jpeg_compressibility")
    records = _records(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    bad = records[BAD_ITERATION - 1]
    assert quantity in bad["nonfinite"].split(","), bad["nonfinite"]
    assert bad["nonfinite_skips"] >= 1 and bad["nonfinite_in_a_row"] == 1
    assert [r["nonfinite_skips"] for r in records if r["step"] != BAD_ITERATION] == [0, 0]
    assert records[-1]["nonfinite_in_a_row"] == 0
    before, after = _trained(run, BAD_ITERATION - 1), _trained(run, BAD_ITERATION)
    assert all(torch.equal(before[k], after[k]) for k in before), "a poisoned update was applied"
    assert all(torch.isfinite(v).all() for v in _trained(run, 3).values())
    assert not all(torch.equal(after[k], _trained(run, 3)[k]) for k in after)  # clean iterations still train
    assert f"step {BAD_ITERATION}: non-finite {quantity}" in caplog.text


def test_a_reward_that_stays_nan_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _count_rollouts(monkeypatch)
    with pytest.raises(NonFiniteError) as error:
        _run(tmp_path, reward={"nan_reward": {"always": True}}, max_nonfinite_in_a_row=2)
    message = str(error.value)
    assert "\n" not in message and "2 iterations in a row" in message and "train.max_nonfinite_in_a_row" in message
    assert "reward nan_reward" in message
    records = _records(tmp_path / "run")
    assert [(r["step"], r["nonfinite"], r["nonfinite_in_a_row"]) for r in records] == [(1, "reward", 1), (2, "reward", 2)]
    assert not (tmp_path / "run" / "final").exists()


def test_a_skipped_first_update_does_not_print_the_scheduler_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch warned "lr_scheduler.step() before optimizer.step()" whenever the first update was skipped."""
    import warnings

    _count_rollouts(monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "BAD_ITERATION", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _run(tmp_path, reward={"nan_reward": {"always": False}})
    assert _records(run)[0]["nonfinite_skips"] >= 1  # the first update was skipped
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
