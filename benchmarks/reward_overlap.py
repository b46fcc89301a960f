"""How much of a slow reward ``score_async`` hides behind sampling-like work, measured.

Per iteration: "sampling" = a CPU torch matmul loop (one thread); "reward" = ``vlm_judge`` scoring a
batch against the fake OpenAI server of ``treegrpo.testing`` on 127.0.0.1, which waits ``--delay`` seconds per
request (a remote judge). Sequential: sample, then score. Overlapped: start scoring batch k with
``score_async`` and sample batch k+1 while it runs (what a trainer that scores the previous batch
while sampling the next would do), then collect.

    python -m benchmarks.reward_overlap --out benchmarks/results/reward_overlap.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from treegrpo.rewards import get_reward
from treegrpo.rewards.overlap import score_async
from treegrpo.testing.fake_judge_server import FakeJudgeServer, Reply, chat


def sampling_work(matmuls: int, size: int) -> torch.Tensor:
    """Stand-in for a denoising loop: ``matmuls`` products of ``size x size`` matrices."""
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    w = torch.randn(size, size, generator=torch.Generator().manual_seed(1)) / size**0.5
    for _ in range(matmuls):
        x = torch.tanh(x @ w)
    return x


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="images scored per iteration")
    parser.add_argument("--delay", type=float, default=0.25, help="seconds the fake judge takes per request")
    parser.add_argument("--concurrency", type=int, default=4, help="vlm_judge max_concurrency")
    parser.add_argument("--matmuls", type=int, default=240)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    images = torch.rand(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = [f"prompt {i}" for i in range(args.batch)]
    with FakeJudgeServer(lambda req, n: Reply(payload=chat("Score: 7"), delay=args.delay)) as server:
        judge = get_reward("vlm_judge", base_url=server.base_url, model="judge", max_concurrency=args.concurrency,
                           timeout=30.0, batch_timeout_s=60.0)

        def sequential() -> None:
            for _ in range(args.iterations):
                sampling_work(args.matmuls, args.size)
                judge(images, prompts)

        def overlapped() -> None:
            pending = None
            for _ in range(args.iterations):
                sampling_work(args.matmuls, args.size)  # sample batch k (while batch k-1 is scored)
                if pending is not None:
                    pending.result()
                pending = score_async(judge, images, prompts)
            if pending is not None:
                pending.result()

        sampling_work(2, args.size)  # warm-up
        runs: dict[str, list[float]] = {"work_only": [], "reward_only": [], "sequential": [], "overlapped": []}
        for _ in range(args.repeats):
            runs["work_only"].append(timed(lambda: [sampling_work(args.matmuls, args.size) for _ in range(args.iterations)]))
            runs["reward_only"].append(timed(lambda: [judge(images, prompts) for _ in range(args.iterations)]))
            runs["sequential"].append(timed(sequential))
            runs["overlapped"].append(timed(overlapped))
        assert judge.total_stats.fallbacks == 0, "the fake judge should answer every request"

    median = {k: statistics.median(v) for k, v in runs.items()}
    result = {"settings": vars(args) | {"out": str(args.out)}, "seconds": runs, "median_seconds": median,
              "speedup": median["sequential"] / median["overlapped"],
              "hidden_fraction_of_reward": (median["sequential"] - median["overlapped"]) / median["reward_only"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    n = args.iterations
    print(f"{n} iterations, batch {args.batch}, judge delay {args.delay} s/request, concurrency {args.concurrency}, "
          f"{args.matmuls} matmuls of {args.size}^2 per sampling step; median of {args.repeats} repeats")
    print("| run | seconds | s / iteration |")
    print("|---|---|---|")
    for key in ("work_only", "reward_only", "sequential", "overlapped"):
        print(f"| {key.replace('_', ' ')} | {median[key]:.2f} | {median[key] / n:.3f} |")
    print(f"speedup sequential/overlapped: {result['speedup']:.2f}x; "
          f"reward time hidden: {100 * result['hidden_fraction_of_reward']:.0f} %")


if __name__ == "__main__":
    main()
