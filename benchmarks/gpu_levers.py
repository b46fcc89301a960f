"""Speed levers of one GPU iteration, each measured on and off in one process on the same model.

Builds ``gpu_iteration.py``'s model (``--size``, random weights of the published config), runs one
TreeGRPO iteration to get a real rollout and its trained edges, then times against the baseline:

- training forward + backward of ``--train-batches`` parents per minibatch (x2 rows with CFG);
- each SDPA kernel (flash, memory-efficient, cuDNN) for that forward + backward;
- the AdamW step: for-loop, ``foreach`` (torch's CUDA default) and ``fused``;
- a rollout model call (no grad) of ``--rollout-rows`` latents, the rollout's per-FLOP speed;
- ``--compile``: the same forward + backward and rollout call after ``model.compile`` (regional
  compilation of the repeated blocks), with the first call's seconds (the compile) apart.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions,
attention); TFLOP/s is FLOPs over the median of ``--repeats`` timed calls; MFU is against
``--peak-tflops``. The JSON is rewritten after every row, so a run cut off by a time limit keeps
what it measured.

    python -m benchmarks.gpu_levers --size sd35m --device cuda --dtype bf16 --compile --out DIR
    python -m benchmarks.gpu_levers --size tiny --device cpu --dtype fp32 --repeats 1 --train-batches 2   # a check
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from benchmarks import gpu_iteration as G
from benchmarks.common import markdown_table, portable_args, write_json

from treegrpo.engine.update import TorchLearner
from treegrpo.models.acceleration import compile_blocks
from treegrpo.models.config import torch_dtype
from treegrpo.engine.minibatches import make_minibatches, minibatch_loss


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This script's options, and ``gpu_iteration.py``'s (every option this script does not know goes there)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--train-batches", type=int, nargs="+", default=[2, 4, 8], help="parents per training forward")
    parser.add_argument("--rollout-rows", type=int, nargs="+", default=[8, 16, 32], help="latents per rollout call")
    parser.add_argument("--kernels", nargs="+", default=["flash", "efficient", "cudnn"],
                        choices=["flash", "efficient", "cudnn", "math"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure after model.compile (last: it is slow)")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_levers_<size>.json")
    own, rest = parser.parse_known_args(argv)
    bench_args = G.parse_args(["--methods", "treegrpo", *rest])
    return own, bench_args


def measure(device: torch.device, fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """FLOPs of one ``fn()`` call, the median seconds of ``repeats`` timed calls, and the peak memory of those."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [G.timed(device, fn)[1] for _ in range(max(1, repeats))]
    flops = float(counter.get_total_flops())
    median = statistics.median(seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"flops": flops, "seconds": median, "tflops": flops / median / 1e12, "peak_gib": peak}


class Levers:
    """The built bench, one rollout of it, and the rows measured so far."""

    def __init__(self, own: argparse.Namespace, args: argparse.Namespace) -> None:
        self.own, self.args = own, args
        self.device = torch.device(args.device)
        spec = G.SIZES[args.size]
        started = time.perf_counter()
        backbone = G.build_backbone(spec, args)
        parameters = backbone.trainable_parameters()
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
        conditioning = G.random_conditioning(spec, args.prompts, torch_dtype(args.dtype), self.device)
        reward = G.ClipReward(spec, args.prompts, torch_dtype(args.dtype), self.device, args.reward_batch)
        self.bench = G.Bench(args, backbone, conditioning, reward, TorchLearner(parameters, optimizer), self.device)
        _, self.rollout, self.edge_advantages, self.mask = G.run_iteration(self.bench, "treegrpo", 0)
        self.method = G.method_config("treegrpo", args)
        schedule = backbone.schedule(args.steps)
        self.stepper = schedule.stepper(args.noise_level)
        self.model_fn = backbone.model_fn(conditioning, args.guidance, schedule)
        self.rows: list[dict[str, Any]] = []
        print(f"{args.size}: built and one iteration in {time.perf_counter() - started:.1f} s", flush=True)

    def training_call(self, parents: int) -> Callable[[], None]:
        """One training forward + backward of a minibatch of ``parents`` parents (gradients cleared after)."""
        batch = make_minibatches(self.rollout, self.mask, parents, torch.Generator().manual_seed(0))[0]

        def call() -> None:
            with G.compute_precision(self.args, self.device):
                out = minibatch_loss(self.model_fn, self.stepper, self.rollout, batch, self.edge_advantages, self.method.loss)
            out.loss.backward()
            self.bench.learner.optimizer.zero_grad(set_to_none=True)

        return call

    def rollout_call(self, rows: int) -> Callable[[], None]:
        """One no-grad model call on ``rows`` latents at the first step (x2 rows with CFG)."""
        latents = self.bench.backbone.initial_noise(rows, torch.Generator(device=self.device).manual_seed(0)).to(self.device)
        step = torch.zeros(rows, dtype=torch.long, device=self.device)
        cond = torch.zeros(rows, dtype=torch.long, device=self.device)

        @torch.no_grad()
        def call() -> None:
            with G.compute_precision(self.args, self.device):
                self.model_fn(latents, step, cond)

        return call

    def add(self, lever: str, setting: str, values: dict[str, float], **extra: float) -> None:
        """Record a row, print it, rewrite the JSON."""
        row = {"lever": lever, "setting": setting, **values, **extra}
        if "tflops" in values:
            row["mfu"] = values["tflops"] / self.args.peak_tflops
        self.rows.append(row)
        print(f"{lever:>10} {setting:<28} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                   if isinstance(v, float)), flush=True)
        self.write()

    def write(self) -> None:
        if self.own.out is None:
            return
        payload = {"size": self.args.size, "args": portable_args(vars(self.args)),
                   "environment": G.environment(self.device), "rows": self.rows, "table": table(self.rows)}
        write_json(self.own.out / f"gpu_levers_{self.args.size}.json", payload)

    # ------------------------------------------------------------------ the levers

    def micro_batches(self) -> None:
        for parents in self.own.train_batches:
            self.add("train", f"{parents} parents", measure(self.device, self.training_call(parents), self.own.repeats))

    def kernels(self) -> None:
        parents = self.own.train_batches[len(self.own.train_batches) // 2]
        for name in self.own.kernels:
            try:
                with G.sdpa_kernels([name]):
                    values = measure(self.device, self.training_call(parents), self.own.repeats)
            except RuntimeError as error:  # a kernel that does not support these shapes / this device
                print(f"    kernel {name}: {str(error).splitlines()[0]}", flush=True)
                continue
            self.add("sdpa", f"{name}, {parents} parents", values)

    def optimizers(self) -> None:
        parameters = self.bench.backbone.trainable_parameters()
        for name, options in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
            if name == "fused" and self.device.type not in ("cuda", "cpu"):
                continue
            optimizer = torch.optim.AdamW(parameters, lr=1e-9, weight_decay=0.0, **options)
            for p in parameters:
                p.grad = torch.zeros_like(p)
            optimizer.step()  # states allocated
            seconds = statistics.median(G.timed(self.device, optimizer.step)[1] for _ in range(max(1, self.own.repeats)))
            self.add("adamw", name, {"seconds": seconds}, parameters=float(sum(p.numel() for p in parameters)))
            for p in parameters:
                p.grad = None
            del optimizer
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def rollout_calls(self, setting: str = "") -> None:
        for rows in self.own.rollout_rows:
            self.add("rollout", f"{rows} latents{setting}", measure(self.device, self.rollout_call(rows), self.own.repeats))

    def compiled(self) -> None:
        started = time.perf_counter()
        blocks = compile_blocks(self.bench.backbone.denoiser)
        parents = self.own.train_batches[len(self.own.train_batches) // 2]
        call = self.training_call(parents)
        first = G.timed(self.device, call)[1]
        self.add("compile", f"train, {parents} parents", measure(self.device, call, self.own.repeats),
                 first_call_seconds=first, blocks=float(blocks))
        rows = self.own.rollout_rows[len(self.own.rollout_rows) // 2]
        call = self.rollout_call(rows)
        first = G.timed(self.device, call)[1]
        self.add("compile", f"rollout, {rows} latents", measure(self.device, call, self.own.repeats),
                 first_call_seconds=first, since_compile_seconds=time.perf_counter() - started)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the measured rows."""
    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None or value != value else format(value, spec)

    body = [[row["lever"], row["setting"], cell(row, "seconds", ".4f"), cell(row, "tflops", ".1f"),
             "-" if "mfu" not in row else f"{100 * row['mfu']:.1f}%", cell(row, "peak_gib", ".1f"),
             cell(row, "first_call_seconds", ".1f")] for row in rows]
    return markdown_table(["lever", "setting", "seconds", "TFLOP/s", "MFU", "peak GiB", "first call s"], body)


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Print a section's start and its seconds."""
    started = time.perf_counter()
    print(f"-- {name}", flush=True)
    yield
    print(f"-- {name}: {time.perf_counter() - started:.1f} s", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    own, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    levers = Levers(own, args)
    with section("training micro-batches"):
        levers.micro_batches()
    if levers.device.type == "cuda":
        with section("attention kernels"):
            levers.kernels()
    with section("rollout calls"):
        levers.rollout_calls()
    with section("optimizer"):
        levers.optimizers()
    if own.compile:
        with section("compile"):
            levers.compiled()
    print(table(levers.rows))
    return levers.rows


if __name__ == "__main__":
    main()
