"""Past one machine: two launchers of one process each ("two nodes" on localhost, gloo) train like one
launcher of two processes; a checkpoint saved by N processes resumes on M (2 -> 1, 1 -> 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.test_trainer import ROOT, free_port, tiny_values
from treegrpo.config import ConfigError, resolve_config
from treegrpo.runtime import checkpoint as ckpt
from treegrpo.trainer import Trainer, train
from treegrpo.trainer.setup import check_processes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
          "--dynamo_backend", "no"]


def _config(tmp_path: Path, iterations: int) -> Path:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_values(tmp_path, iterations=iterations, eval_every=0, eval_at_start=False)))
    return config


def _train_command(config: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "treegrpo", "train", str(config), "--output-dir", str(out), *extra]


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "trained.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_machines_of_one_process_train_like_one_machine_of_two(tmp_path: Path, sharding: str) -> None:
    config = _config(tmp_path, iterations=2)
    options = ["train.fsdp=true", "train.ema=0"] if sharding == "fsdp" else []
    one, two = tmp_path / "one_machine", tmp_path / "two_machines"
    single = subprocess.run(LAUNCH + ["--num_machines", "1", "--num_processes", "2", "--main_process_port", free_port(),
                                      *_train_command(config, one, *options)], env=ENV, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    nodes = [subprocess.Popen(LAUNCH + ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                                        "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                        *_train_command(config, two, *options)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    a, b = _records(one), _records(two)
    assert [r["num_processes"] for r in b] == [2, 2]
    assert [r["reward_mean"] for r in a] == [r["reward_mean"] for r in b]
    wa, wb = _weights(one, 2), _weights(two, 2)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if sharding == "fsdp":  # an FSDP checkpoint (whole tensors) of 2 processes resumes on 1
        assert "denoiser sharded over 2 processes" in outputs[0][1] + outputs[1][1]
        values = json.loads(config.read_text())
        train(resolve_config(values, [f"output_dir={two}", "train.iterations=3", *options]), resume=str(two))
        assert [r["num_processes"] for r in _records(two)] == [2, 2, 1]


@pytest.mark.slow
def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path: Path) -> None:
    config = _config(tmp_path, iterations=2)
    values = json.loads(config.read_text())
    # 2 -> 1: two processes train 2 iterations, one process continues to 3
    two = tmp_path / "two"
    done = subprocess.run(LAUNCH + ["--num_machines", "1", "--num_processes", "2", "--main_process_port", free_port(),
                                    *_train_command(config, two)], env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = two / "checkpoints" / "step-000002"
    state = json.loads((saved / "state.json").read_text())
    assert state["world_size"] == 2
    cfg = resolve_config(values, [f"output_dir={two}", "train.iterations=3"])
    trainer = Trainer(cfg, run_dir=two, resume_from=saved)  # what a resume on one process restores
    assert trainer.start_iteration == 2
    assert trainer.sampler.state_dict() == state["sampler"]
    loaded, on_disk = ckpt.trained_state(trainer.backbone.denoiser), _weights(two, 2)
    assert loaded.keys() == on_disk.keys() and all(torch.equal(loaded[k], on_disk[k]) for k in loaded)
    optimizer = ckpt.safe_torch_load(saved / "optimizer.pt")["state"]
    restored = trainer.state.raw_optimizer().state_dict()["state"]
    assert all(torch.equal(restored[i]["exp_avg"], optimizer[i]["exp_avg"]) for i in optimizer)
    trainer.reward_worker.shutdown()
    del trainer
    train(cfg, resume=str(two))
    records = _records(two)
    assert [r["step"] for r in records] == [1, 2, 3] and [r["num_processes"] for r in records] == [2, 2, 1]
    assert records[2]["epoch"] >= records[1]["epoch"]

    # 1 -> 2: one process trains 2 iterations, two processes continue to 3; the sampler goes on where it was
    one = tmp_path / "one"
    train(resolve_config(values, [f"output_dir={one}"]))
    done = subprocess.run(LAUNCH + ["--num_machines", "1", "--num_processes", "2", "--main_process_port", free_port(),
                                    *_train_command(config, one, "train.iterations=3", "--resume", str(one))],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per-process rollout/minibatch streams re-derived" in done.stderr
    records = _records(one)
    assert [r["step"] for r in records] == [1, 2, 3] and [r["num_processes"] for r in records] == [1, 1, 2]
    # the global sampler is in the same place as a run that never changed its processes
    straight = tmp_path / "straight"
    train(resolve_config(values, [f"output_dir={straight}", "train.iterations=3"]))
    after = json.loads((one / "checkpoints/step-000003/state.json").read_text())
    assert after["sampler"] == json.loads((straight / "checkpoints/step-000003/state.json").read_text())["sampler"]
    assert after["optimizer_steps"] == json.loads((straight / "checkpoints/step-000003/state.json").read_text())["optimizer_steps"]


def test_a_resume_on_processes_the_trees_do_not_split_over_is_refused(tmp_path: Path) -> None:
    """2 -> 3 holds only where the trees and the global minibatch split over 3: each is named when not."""
    values = tiny_values(tmp_path)
    values["data"]["prompts_per_iteration"] = 3
    check_processes(resolve_config(values, ["tree.trees=2", "train.parents_per_batch=6"]), 3)  # 6 trees, 6 parents
    with pytest.raises(ConfigError, match=r"^4 trees per iteration .* do not split over 3 processes"):
        check_processes(resolve_config(tiny_values(tmp_path), ["tree.trees=2"]), 3)
    with pytest.raises(ConfigError, match=r"^train.parents_per_batch=4 .* does not split over 3 processes"):
        check_processes(resolve_config(values, ["tree.trees=2", "train.parents_per_batch=4"]), 3)
