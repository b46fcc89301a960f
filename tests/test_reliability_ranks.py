"""A dead or stalled rank (issue 31): two processes (gloo), one SIGKILLed mid-rollout or mid-update, or
SIGSTOPped. The survivor stops with one line naming the process it lost, the last complete checkpoint
and the resume command, instead of a gloo traceback or a hang (a stalled peer: after
``train.dist_timeout``); the printed command resumes the run to the end of an uninterrupted one, bit
for bit."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from safetensors.torch import load_file

from tests.test_trainer import ROOT, free_port, tiny_values
from treegrpo.config import resolve_config
from treegrpo.errors import ConfigError

TWO_PROCESSES = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
LAST = "checkpoints/step-000004"
WEIGHTS = (f"{LAST}/trained.safetensors", f"{LAST}/ema.safetensors", "final/pytorch_lora_weights.safetensors")
"""What a finished run keeps of its training: the last checkpoint's weights and EMA, the exported LoRA."""


def _env(faults: Optional[str] = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("TREEGRPO_FAULTS", None)
    return {**env, "TREEGRPO_FAULTS": faults} if faults else env


def _train(config: Path, out: Path, dist_timeout: str = "1") -> list[str]:
    """``accelerate launch`` (2 CPU processes) of ``treegrpo train``; the same settings for every run here."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TWO_PROCESSES),
            "--main_process_port", free_port(), "-m", "treegrpo", "train", str(config), "--output-dir", str(out),
            f"train.dist_timeout={dist_timeout}"]


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("treegrpo train: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _resumed(line: str) -> subprocess.CompletedProcess[str]:
    """Run the resume command the line prints (on a free port: a port is all a test adds)."""
    words = shlex.split(line.split("continue with `")[1].split("`")[0])
    assert words[:2] == ["accelerate", "launch"], words
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", free_port(), *words[2:]]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)


def _rewards(run: Path) -> list[dict[str, float]]:
    """Each iteration's rewards in metrics.jsonl (the mean, its spread, each component; not the time scoring took)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items()
             if key == "step" or (key.startswith("reward") and not key.endswith("seconds"))} for record in records]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ranks")
    file = folder / "tiny.json"
    file.write_text(json.dumps(tiny_values(folder, iterations=4, eval_every=0, eval_at_start=False, checkpoint_every=1)))
    return file


@pytest.fixture(scope="module")
def straight(config: Path) -> Path:
    """The same run on 2 processes, uninterrupted."""
    out = config.parent / "straight"
    done = subprocess.run(_train(config, out), env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize(("fault", "dead", "survivor", "checkpoint"),
                         [("rollout:2:kill@1", 1, 0, 1), ("update:3:kill@0", 0, 1, 2)], ids=["rank1-rollout", "rank0-update"])
def test_the_survivor_names_the_dead_rank_and_its_resume_command_ends_the_run_exactly(
        tmp_path: Path, config: Path, straight: Path, fault: str, dead: int, survivor: int, checkpoint: int) -> None:
    out = tmp_path / "ddp"
    done = subprocess.run(_train(config, out), env=_env(fault), capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    line = _error_line(done.stderr)
    assert f"process {survivor}: process {dead} of 2 stopped answering" in line, line
    assert "killed, out of memory?" in line, line
    assert f"checkpoints/step-{checkpoint:06d}" in line and f"train --resume {out}" in line

    resumed = _resumed(line)  # 2 processes again, from the checkpoint the line names
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {checkpoint + 1}/4" in resumed.stderr and f"step {checkpoint}/4" not in resumed.stderr
    for name in WEIGHTS:
        mine, theirs = load_file(str(out / name)), load_file(str(straight / name))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    assert _rewards(out) == _rewards(straight) and [r["step"] for r in _rewards(out)] == [1, 2, 3, 4]


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, each with its start time (so a reused pid is not taken for it)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = fields[19]
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _seen(lines: list[tuple[float, str]], wanted: Callable[[str], bool], deadline: float, reader: threading.Thread,
          waiting_for: str) -> tuple[float, str]:
    """The first stderr line ``wanted`` and when it came; fails at ``deadline``, or at the end of stderr without it."""
    while True:
        ended = not reader.is_alive()  # then every line is in
        found = next(((at, text) for at, text in list(lines) if wanted(text)), None)
        if found is not None:
            return found
        assert not ended and time.monotonic() < deadline, (
            f"no {waiting_for}:\n" + "\n".join(text for _, text in lines[-30:]))
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the launcher's workers in /proc")
def test_a_stalled_rank_fails_the_survivor_after_dist_timeout_and_is_torn_down(tmp_path: Path, config: Path) -> None:
    """Rank 1 SIGSTOPs itself in iteration 2 (alive, sockets open, answering nothing). With
    ``train.dist_timeout=0.05`` (3 s) the survivor gives up within seconds, not the default 10 minutes;
    the launcher then ends the stopped worker (SIGTERM, and SIGKILL after its 30 s grace)."""
    out = tmp_path / "stalled"
    launcher = subprocess.Popen(_train(config, out, dist_timeout="0.05"), env=_env("rollout:2:stop@1"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert launcher.stderr is not None
        for text in launcher.stderr:
            lines.append((time.monotonic(), text.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    workers: dict[int, str] = {}
    try:
        step_1, _ = _seen(lines, lambda text: text.startswith("step 1/4"), time.monotonic() + 120, reader, "step 1")
        workers = _children(launcher.pid)  # the launcher starts each worker in a session of its own
        assert len(workers) == 2, workers
        _, line = _seen(lines, lambda text: text.startswith("treegrpo train: error:"), step_1 + 60, reader,
                        "word from the survivor 60 s after step 1 (a 3 s timeout)")
        assert "process 0: process 1 of 2 stopped answering during step 2 (no answer within train.dist_timeout" in line
        assert "checkpoints/step-000001" in line and f"train --resume {out}" in line
        launcher.wait(timeout=90)  # the launcher's 30 s grace for the stopped worker, then SIGKILL
        reader.join(timeout=10)
        assert launcher.returncode != 0
        assert _error_line("\n".join(text for _, text in lines)) == line
        assert not [pid for pid, started in workers.items() if _alive(pid, started)], "a worker outlived its launcher"
    finally:  # no orphans, whatever failed above: the workers by pid, then the launcher's group
        for pid, started in workers.items():
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait(timeout=30)


def test_dist_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.dist_timeout=0.0 must be > 0"):
        resolve_config(tiny_values(tmp_path), ["train.dist_timeout=0"])


def test_dist_timeout_reaches_the_process_group(tmp_path: Path) -> None:
    from datetime import timedelta

    from treegrpo.trainer.distributed import process_group_kwargs, process_group_timeout

    assert process_group_kwargs(2.5).timeout == process_group_timeout(2.5) == timedelta(minutes=2.5)
    assert resolve_config(tiny_values(tmp_path), ["train.dist_timeout=0.05"]).train.dist_timeout == 0.05  # 3 s
