"""Crash driver for tests/test_reliability_crash.py: import treegrpo once, then fork one real child
process per scenario, each running ``treegrpo train`` (cli.main) with a ``TREEGRPO_FAULTS`` spec
that SIGKILLs / SIGTERMs / SIGINTs it at a named point. Prints one JSON line per scenario.

    python tests/reliability_driver.py CONFIG.yaml PLAN.json

PLAN is a list of ``{"out": RUN, "faults": SPEC, "resume": bool}``. After each child ends the
driver records how it ended and the newest checkpoint that passes ``checkpoint.verify``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from treegrpo.runtime import checkpoint as ckpt  # noqa: E402
from treegrpo import cli  # noqa: E402
from treegrpo.runtime import faults  # noqa: E402

torch.set_num_threads(1)
import diffusers  # noqa: E402,F401  (imported before forking so children start fast)
import matplotlib.pyplot  # noqa: E402,F401
import torch.utils.tensorboard  # noqa: E402,F401
from diffusers import StableDiffusion3Pipeline  # noqa: E402,F401

import treegrpo.models.loading  # noqa: E402,F401
import treegrpo.rewards.jpeg  # noqa: E402,F401
import treegrpo.trainer  # noqa: E402,F401


def run_child(config: str, scenario: dict[str, Any]) -> dict[str, Any]:
    """Fork, run ``treegrpo train`` with the scenario's faults in the child, and describe its end."""
    argv = ["train", config, "--output-dir", scenario["out"]] + (["--resume", "auto"] if scenario.get("resume") else [])
    pid = os.fork()
    if pid == 0:  # the child: a fresh treegrpo process as far as faults and signals go
        os.environ[faults.ENV] = scenario.get("faults", "")
        faults.reset()
        devnull = os.open(os.devnull, os.O_WRONLY)
        err = os.open(scenario["out"] + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(devnull, 1)
        os.dup2(err, 2)
        code = 70
        try:
            code = cli.main(argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = {"faults": scenario.get("faults", ""), "resume": bool(scenario.get("resume"))}
    if os.WIFSIGNALED(status):
        result["signal"] = signal.Signals(os.WTERMSIG(status)).name
    else:
        result["exit"] = os.WEXITSTATUS(status)
    run = Path(scenario["out"])
    latest = ckpt.latest_checkpoint(run)
    result["latest"] = int(latest.name.split("-")[1]) if latest else 0
    result["complete"] = [p.name for p in ckpt.complete_checkpoints(run)]
    result["broken"] = [p.name for p in ckpt.complete_checkpoints(run) if ckpt.problem(p) is not None]
    result["stderr_tail"] = Path(scenario["out"] + ".stderr").read_text(errors="replace").strip().splitlines()[-1:]
    return result


def main() -> None:
    """Run every scenario of the plan in order."""
    config, plan_file = sys.argv[1], sys.argv[2]
    for scenario in json.loads(Path(plan_file).read_text()):
        if scenario.get("corrupt"):
            target = Path(scenario["corrupt"])
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
            print(json.dumps({"corrupted": str(target)}), flush=True)
            continue
        print(json.dumps(run_child(config, scenario)), flush=True)


if __name__ == "__main__":
    main()
