"""Crash safety through real processes: SIGKILL at named points (rollout, reward, update, metrics and
every file write of a checkpoint), SIGTERM and SIGINT, and a corrupted newest checkpoint.

One driver process imports treegrpo once and forks a child per scenario (tests/reliability_driver.py);
each child runs ``treegrpo train`` and dies where ``TREEGRPO_FAULTS`` says. After every death the
newest checkpoint that passes the manifest check must be exactly the last one saved before the kill
point, no checkpoint may be broken, and the run resumed through all of it must end bit-identical
to an uninterrupted run (so resume never accepted anything corrupt and lost nothing else).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_trainer import tiny_values
from treegrpo.runtime import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
WRITES = 11
"""checkpoint_write points per checkpoint (1 process, EMA on): rng .pt/.json, trained, ema, optimizer,
scheduler, state.json, MANIFEST.json, COMPLETE, rename, prune."""

# (faults, resume, expected end, newest valid checkpoint after it)
CHAIN: list[tuple[str, bool, str, int]] = [
    ("rollout:2:kill", False, "SIGKILL", 1),  # iteration 2 in flight; step 1 saved
    ("checkpoint_write:1:kill", True, "SIGKILL", 1),  # before the RNG file of step 2
    ("checkpoint_write:3:kill", True, "SIGKILL", 1),  # before trained.safetensors
    ("checkpoint_write:5:kill", True, "SIGKILL", 1),  # before optimizer.pt
    ("checkpoint_write:8:kill", True, "SIGKILL", 1),  # before MANIFEST.json
    ("checkpoint_write:9:kill", True, "SIGKILL", 1),  # before COMPLETE
    ("checkpoint_write:10:kill", True, "SIGKILL", 1),  # before the rename into place
    ("checkpoint_write:11:kill", True, "SIGKILL", 2),  # renamed, not yet pruned
    ("reward:1:kill", True, "SIGKILL", 2),
    ("update:1:kill", True, "SIGKILL", 2),
    ("metrics:1:kill", True, "SIGKILL", 2),
    ("rollout:1:term", True, "exit 143", 3),  # SIGTERM: finish iteration 3, save it, exit
    ("update:1:int", True, "exit 130", 4),  # Ctrl-C: finish iteration 4 (the last), save, exit
]


def _write_config(tmp_path: Path) -> Path:
    values = tiny_values(tmp_path, iterations=4, eval_every=0, eval_at_start=False, keep_checkpoints=4)
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(values))
    return config


def _drive(config: Path, plan: list[dict], tmp_path: Path) -> list[dict]:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "reliability_driver.py"), str(config), str(plan_file)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _ended(result: dict) -> str:
    return result["signal"] if "signal" in result else f"exit {result['exit']}"


def _weights(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    folder = run / "checkpoints" / ckpt.step_name(step)
    return {name: load_file(str(folder / f"{name}.safetensors")) for name in ("trained", "ema")}


def _equal(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


def test_kills_signals_and_corruption_never_lose_more_than_one_checkpoint(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    straight, chaos = str(tmp_path / "straight"), str(tmp_path / "chaos")
    plan = [{"out": straight}]
    plan += [{"out": chaos, "faults": faults, "resume": resume} for faults, resume, _, _ in CHAIN]
    plan += [{"corrupt": str(Path(chaos) / "checkpoints" / "step-000004" / "trained.safetensors")},
             {"out": chaos, "resume": True}]
    results = _drive(config, plan, tmp_path)
    assert len(results) == len(plan)
    assert _ended(results[0]) == "exit 0"
    for (faults, _, end, latest), result in zip(CHAIN, results[1:]):
        assert (_ended(result), result["latest"]) == (end, latest), result
        assert result["broken"] == [], result  # no half-written checkpoint ever looks complete
    for result in results[12:14]:  # signals: one line on stderr naming the checkpoint and how to resume
        line = result["stderr_tail"][0]  # the exact command that resumes this run, not its config's folder
        assert "checkpoint" in line and f"`treegrpo train --resume {Path(chaos).resolve()}`" in line
    assert results[-2] == {"corrupted": plan[-2]["corrupt"]}
    # the corrupted newest checkpoint is skipped: resume falls back to step 3, redoes iteration 4
    assert _ended(results[-1]) == "exit 0" and results[-1]["latest"] == 4 and results[-1]["broken"] == []
    assert _equal(_weights(Path(chaos), 4), _weights(Path(straight), 4))
    lines = (Path(chaos) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert not list((Path(chaos) / "checkpoints").glob(".tmp-*"))


def _save(run: Path, step: int) -> Path:
    folder = ckpt.begin(run, step)
    ckpt.save_rng(folder, 0, {})
    ckpt.save_main(folder, weights={"w": torch.full((4,), float(step))}, ema=None, optimizer={"state": {}},
                   scheduler={}, state={"iteration": step})
    return ckpt.finish(run, step, keep=5)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "trained.safetensors").write_bytes((f / "trained.safetensors").read_bytes()[:-3]), "bytes"),
        (lambda f: (f / "optimizer.pt").write_bytes(b"x" * (f / "optimizer.pt").stat().st_size), "SHA-256"),
        (lambda f: (f / "state.json").unlink(), "missing"),
        (lambda f: (f / ckpt.MANIFEST).write_text("{not json"), "MANIFEST"),
        (lambda f: (f / ckpt.COMPLETE).unlink(), "COMPLETE"),
    ],
    ids=["truncated", "overwritten", "file-missing", "manifest-garbage", "no-marker"],
)
def test_resume_skips_a_broken_newest_checkpoint(tmp_path: Path, damage, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    for step in (1, 2):
        _save(tmp_path, step)
    newest = tmp_path / "checkpoints" / "step-000002"
    assert ckpt.latest_checkpoint(tmp_path) == newest and ckpt.problem(newest) is None
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="treegrpo.runtime.checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000001"
    if reason != "COMPLETE":  # a folder without the marker is not a checkpoint at all: nothing to warn about
        assert "skipping checkpoint" in caplog.text and reason in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.read_state(newest)
    assert ckpt.read_state(tmp_path / "checkpoints" / "step-000001")["iteration"] == 1
