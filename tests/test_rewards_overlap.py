"""score_async runs a reward in a worker thread (results, order, errors, inputs checked at once);
reward_device and offload move a reward's models where they should be around each call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import pytest
import torch

from treegrpo.rewards.base import BatchedReward
from treegrpo.rewards.overlap import score_async


class _Slow:
    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.threads: list[str] = []

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return images.mean(dim=(1, 2, 3))


def test_score_async_overlaps_and_returns_the_scores() -> None:
    reward = _Slow(0.3)
    images = torch.rand(4, 3, 8, 8)
    start = time.monotonic()
    future = score_async(reward, images, ["p"] * 4)
    submitted = time.monotonic() - start
    torch.testing.assert_close(future.result(timeout=5), images.mean(dim=(1, 2, 3)))
    assert submitted < 0.2  # returned before the reward finished
    assert reward.threads and reward.threads[0] != threading.current_thread().name


def test_score_async_keeps_order_errors_and_checks_inputs_in_the_caller() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        reward = _Slow(0.0)
        futures = [score_async(reward, torch.full((1, 3, 2, 2), v), ["p"], executor=pool) for v in (0.1, 0.2, 0.3)]
        assert [round(f.result(timeout=5).item(), 3) for f in futures] == [0.1, 0.2, 0.3]

        def broken(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            raise RuntimeError("judge down")

        with pytest.raises(RuntimeError, match="judge down"):
            score_async(broken, torch.rand(1, 3, 2, 2), ["p"], executor=pool).result(timeout=5)
    with pytest.raises(ValueError, match="one prompt per image"):
        score_async(reward, torch.rand(2, 3, 2, 2), ["only one"])
    # copy=True hands over a snapshot: later in-place edits do not reach the reward
    images = torch.zeros(1, 3, 2, 2)
    gate = threading.Event()

    def waits(images_in: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        gate.wait(5)
        return images_in.mean(dim=(1, 2, 3))

    future = score_async(waits, images, ["p"], copy=True)
    images.fill_(1.0)
    gate.set()
    assert future.result(timeout=5).item() == 0.0


class _Recorder(torch.nn.Module):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def to(self, *args: Any, **kwargs: Any) -> "_Recorder":  # record instead of moving
        self.log.append(str(args[0] if args else kwargs.get("device")))
        return self


class _Scorer(BatchedReward):
    def __init__(self, log: list[str], **options: Any) -> None:
        super().__init__(**options)
        self.model = _Recorder(log)
        self.log = log

    def score_batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.log.append("score")
        return images.mean(dim=(1, 2, 3))


def test_reward_device_and_offload_move_the_models_around_each_call() -> None:
    log: list[str] = []
    reward = _Scorer(log, device="cpu", reward_device="cuda:1", offload=True, batch_size=2)
    assert reward.device == torch.device("cuda:1")
    reward(torch.rand(3, 3, 2, 2), ["a", "b", "c"])
    assert log == ["cuda:1", "score", "score", "cpu"]  # on before, both chunks, off after
    log.clear()
    plain = _Scorer(log, device="cpu")
    plain(torch.rand(1, 3, 2, 2), ["a"])
    assert log == ["score"]  # no offload: never moved
    with pytest.raises(ValueError, match="offload must be true or false"):
        _Scorer(log, offload="yes")
