"""The tasks the efficiency protocol trains on: a name -> a factory of runners built from the command line.

A runner trains one (method, lr, seed) spec and returns its history. :func:`train_one` is what a
worker process of ``efficiency.py --jobs N`` calls (a module of its own, so spawned workers import it).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from benchmarks.common import RunSpec, TaskRunner, ToyProtocol, ToyRunner


def make_toy_runner(args: argparse.Namespace) -> TaskRunner:
    """The 2-D toy (``treegrpo.toy``) with the protocol's shared settings."""
    protocol = ToyProtocol(prompts_per_iteration=args.prompts, eval_points=args.eval_points,
                           eval_samples=args.eval_samples, pretrain_steps=args.pretrain_steps)
    return ToyRunner(protocol)


def make_shapes_runner(args: argparse.Namespace) -> TaskRunner:
    """The built-in shapes task (shipped tiny SD3 base, real trainer) with the protocol's shared settings."""
    from benchmarks.shapes_task import ShapesProtocol, ShapesRunner

    protocol = ShapesProtocol(prompts_per_iteration=args.prompts, eval_prompts=args.eval_prompts,
                              eval_points=args.eval_points, guidance_scale=args.guidance_scale, steps=args.steps)
    return ShapesRunner(protocol)


TASKS: dict[str, Callable[[argparse.Namespace], TaskRunner]] = {"toy": make_toy_runner, "shapes": make_shapes_runner}
"""Pluggable tasks: name -> factory of a runner that trains one (method, lr, seed) and returns its history."""


def train_one(args: argparse.Namespace, spec: RunSpec) -> dict[str, Any]:
    """One run in a worker process: the task's runner built there, its history as JSON."""
    torch.set_num_threads(args.threads)
    return TASKS[args.task](args)(spec).to_json()
