"""A dead rank (issue 31): two processes (gloo), one SIGKILLed mid-rollout or mid-update. The survivor
stops at once with one line naming the process it lost, the last complete checkpoint and the resume
command, instead of a gloo traceback (or, on NCCL, a hang until ``train.dist_timeout``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_trainer import ROOT, free_port, tiny_values
from treegrpo.config import ConfigError, resolve_config


@pytest.mark.parametrize(("fault", "dead", "survivor", "checkpoint"),
                         [("rollout:2:kill@1", 1, 0, 1), ("update:3:kill@0", 0, 1, 2)], ids=["rank1-rollout", "rank0-update"])
def test_the_survivor_names_the_dead_rank_and_the_resume_command(tmp_path: Path, fault: str, dead: int, survivor: int,
                                                                 checkpoint: int) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_values(tmp_path, iterations=4, eval_every=0, eval_at_start=False, checkpoint_every=1)))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TREEGRPO_FAULTS": fault,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", free_port(),
               "-m", "treegrpo", "train", str(config), "--output-dir", str(out), "train.dist_timeout=1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("treegrpo train: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert f"process {survivor}: process {dead} of 2 stopped answering" in line, line
    assert f"checkpoints/step-{checkpoint:06d}" in line and f"train --resume {out}" in line


def test_dist_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.dist_timeout=0.0 must be > 0"):
        resolve_config(tiny_values(tmp_path), ["train.dist_timeout=0"])


def test_dist_timeout_reaches_the_process_group() -> None:
    from datetime import timedelta

    from treegrpo.trainer.distributed import process_group_kwargs

    assert process_group_kwargs(2.5).timeout == timedelta(minutes=2.5)
