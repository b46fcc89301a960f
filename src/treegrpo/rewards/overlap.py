"""Score without stalling the loop: run a reward in a worker thread and get a ``Future`` back.

Rewards spend their time in torch kernels (which release the GIL) or waiting on HTTP, so a thread
is enough to overlap scoring with the next sampling step::

    future = score_async(reward, images, prompts)
    ...  # sample the next batch
    scores = future.result()

The reward sees ``images`` as they are when it runs: do not modify them in place until the future
is done (pass ``copy=True`` to hand over a clone instead). One worker per executor keeps a reward's
calls in order and never runs two of them at once (scorers are not thread-safe).
"""

from __future__ import annotations

import atexit
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import torch

from treegrpo.rewards.base import RewardFn, check_inputs

_lock = threading.Lock()
_default: ThreadPoolExecutor | None = None


def default_executor() -> ThreadPoolExecutor:
    """The shared single-worker executor (created on first use, shut down at exit)."""
    global _default
    with _lock:
        if _default is None:
            _default = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treegrpo-reward")
            atexit.register(_default.shutdown, wait=False, cancel_futures=True)
        return _default


def score_async(
    reward: RewardFn,
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    executor: ThreadPoolExecutor | None = None,
    copy: bool = False,
) -> "Future[torch.Tensor]":
    """``reward(images, prompts)`` in a worker thread; the future holds float32 CPU scores [B].

    Inputs are checked here, in the caller's thread, so a bad batch fails at once; errors of the
    reward itself come out of ``future.result()``.
    """
    check_inputs(images, prompts)
    batch = images.detach().clone() if copy else images.detach()
    prompts = list(prompts)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return torch.as_tensor(reward(batch, prompts)).detach().to("cpu", torch.float32).reshape(-1)

    return (executor or default_executor()).submit(run)
