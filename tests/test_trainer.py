"""End-to-end trainer runs on a tiny SD3: run-folder contract, exact resume, two processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline
from treegrpo.math.advantages import normalize_leaf_scores
from treegrpo.config import ConfigError, resolve_config
from treegrpo.rewards.base import RewardOutputError
from treegrpo.trainer import train

ROOT = Path(__file__).resolve().parents[1]



def free_port() -> str:
    """A TCP port nothing listens on now (a fixed one can still be held by a finished run's socket)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])

def tiny_values(tmp_path: Path, **train_options: object) -> dict:
    """A tiny TreeGRPO config: 16 x 16 latents, 4 steps, k2 w2, jpeg reward."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\ntwo blue circles\na green triangle\nthree red squares\na blue circle\n")
    return {
        "model": {"path": str(tiny_pipeline("sd3")), "dtype": "fp32", "device": "cpu", "height": 16, "width": 16,
                  "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH, "lora": {"rank": 4, "alpha": 4}},
        "data": {"prompts": str(prompts), "prompts_per_iteration": 2, "num_eval_prompts": 4},
        "tree": {"k": 2, "window": 2},
        "sampling": {"steps": 4, "guidance_scale": 2.0},
        "reward": "jpeg_compressibility",
        "train": {"iterations": 4, "lr": 1e-3, "checkpoint_every": 1, "eval_every": 2, "progress": False,
                  "ema": 0.5, **train_options},
    }


def run(tmp_path: Path, name: str, overrides: list[str], **kwargs: object) -> Path:
    folder = tmp_path / name
    train(resolve_config(tiny_values(tmp_path), overrides + [f"output_dir={folder}"]), **kwargs)  # type: ignore[arg-type]
    return folder


def test_run_contract_and_exact_resume(tmp_path: Path) -> None:
    straight = run(tmp_path, "straight", [])
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "tensorboard", "samples/step-000000.png",
                 "samples/step-000004.png", "trees/step-000004.png", "checkpoints/step-000004/COMPLETE", "final"):
        assert (straight / name).exists(), name
    assert any((straight / "final").iterdir())
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward/jpeg_compressibility_mean", "loss", "clip_fraction", "approx_kl",
                "ratio_mean", "rollout_nfe", "training_nfe", "guard_fraction", "seconds", "lr"):
        assert key in records[0], key
    assert [p.name for p in sorted((straight / "checkpoints").iterdir())] == ["step-000002", "step-000003", "step-000004"]

    # 2 iterations, stop, resume to 4 (no evaluations in between): identical weights and EMA
    split = run(tmp_path, "split", ["train.iterations=2", "train.eval_every=0"])
    run(tmp_path, "split", ["train.eval_every=0"], resume=str(tmp_path / "split"))
    for file in ("trained", "ema"):
        a = load_file(str(straight / "checkpoints/step-000004" / f"{file}.safetensors"))
        b = load_file(str(split / "checkpoints/step-000004" / f"{file}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    assert len((split / "metrics.jsonl").read_text().splitlines()) == 4

    # another run's folder is refused, and nothing in it is touched
    before = (straight / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="--resume"):
        run(tmp_path, "straight", [])
    assert (straight / "metrics.jsonl").read_text() == before


def test_two_processes_gather_whole_groups(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    values = tiny_values(tmp_path, iterations=2, eval_every=0, eval_at_start=False, debug_dump=True)
    values["data"]["prompts_per_iteration"] = 3
    values["tree"]["trees"] = 2  # 6 trees over 2 processes: prompt 1's trees sit on both
    config.write_text(json.dumps(values))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, "-m", "accelerate.commands.launch",  # the shipped CPU config: 2 processes, gloo
               "--config_file", str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", free_port(),
               "-m", "treegrpo", "train", str(config), "--output-dir", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "checkpoints/step-000002/state.json").read_text())["world_size"] == 2
    for step in (1, 2):
        parts = [torch.load(out / "debug" / f"step-{step:06d}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        scores = torch.cat([p["scores"] for p in parts])
        groups = torch.cat([p["groups"] for p in parts])
        assert set(parts[0]["groups"].tolist()) & set(parts[1]["groups"].tolist())  # a group spans processes
        single = normalize_leaf_scores(scores, groups)  # what one process holding every leaf computes
        assert torch.allclose(torch.cat([p["leaf_advantages"] for p in parts]), single.advantages)
        assert torch.allclose(parts[0]["group_std"], single.group_std)
        assert torch.allclose(parts[0]["group_mean"], single.group_mean)
        assert parts[0]["weights_checksum"] == parts[1]["weights_checksum"]  # DDP kept the replicas equal
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_processes"] for r in records] == [2, 2]
    # train.parents_per_batch is global: 2 processes take 8 parents each and step the optimizer as often as 1 process
    assert "minibatch: 16 parents over 2 processes (8 per process)" in done.stderr
    single = train(resolve_config(values, [f"output_dir={tmp_path / 'single'}", "train.debug_dump=false"]))
    assert [r["optimizer_steps"] for r in records] == [r["optimizer_steps"] for r in single] == [2.0, 2.0]


def test_accelerates_fsdp_plugin_is_refused_with_the_fix(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from treegrpo.trainer import Trainer

    fake = SimpleNamespace(distributed_type=DistributedType.FSDP, process_index=0, num_processes=8, is_main_process=True,
                           device=torch.device("cpu"))
    cfg = resolve_config(tiny_values(tmp_path), [f"output_dir={tmp_path / 'run'}", "data.prompts_per_iteration=8"])
    with pytest.raises(ConfigError, match="FSDP plugin is not used.*8gpu_ddp.yaml.*train.fsdp=true"):
        Trainer(cfg, run_dir=tmp_path / "run", accelerator=fake)


def test_fsdp_trains_like_ddp_and_resumes_exactly(tmp_path: Path) -> None:
    """2 processes (gloo): FSDP2-sharded training matches DDP, checkpoints hold whole tensors, resume is exact."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_values(tmp_path, ema=0.0, checkpoint_every=2, eval_at_start=False)))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
               str(ROOT / "tests" / "fsdp_driver.py"), str(config), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "denoiser sharded over 2 processes" in done.stderr

    def weights(run: str, file: str = "checkpoints/step-000004/trained.safetensors") -> dict[str, torch.Tensor]:
        return load_file(str(out / run / file))

    sharded, split, ddp = weights("fsdp"), weights("fsdp_split"), weights("ddp")
    assert sharded.keys() == ddp.keys() == split.keys()
    assert all(torch.equal(sharded[k], split[k]) for k in sharded)  # 2 + resume + 2 == 4 straight, bit for bit
    assert all(sharded[k].shape == ddp[k].shape and torch.allclose(sharded[k], ddp[k], atol=1e-6) for k in ddp)
    assert any(float(v.abs().max()) > 0 for k, v in sharded.items() if "lora_B" in k)  # it trained
    opt_sharded = torch.load(out / "fsdp/checkpoints/step-000004/optimizer.pt", weights_only=True)["state"]
    opt_ddp = torch.load(out / "ddp/checkpoints/step-000004/optimizer.pt", weights_only=True)["state"]
    assert opt_sharded.keys() == opt_ddp.keys()
    for index, entry in opt_ddp.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_sharded[index][key], entry[key], atol=1e-7), (index, key)
    lora = "final/pytorch_lora_weights.safetensors"
    final_sharded, final_ddp = weights("fsdp", lora), weights("ddp", lora)
    assert final_sharded.keys() == final_ddp.keys()
    assert all(torch.allclose(final_sharded[k], final_ddp[k], atol=1e-6) for k in final_ddp)
    evals = [json.loads(line) for line in (out / "fsdp/eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]
    kl = json.loads((out / "fsdp_kl/metrics.jsonl").read_text().splitlines()[0])
    assert kl["kl"] >= 0 and (out / "fsdp_kl/final/pytorch_lora_weights.safetensors").is_file()


def test_mixed_precision_rollout_and_update_compute_in_one_precision(tmp_path: Path) -> None:
    """With fp32 master weights under train.mixed_precision=bf16 the rollout's old log-probs and the update's
    recomputation come from the same bf16 forward (accelerate patches the denoiser's own forward): ratio exactly 1."""
    from accelerate.state import AcceleratorState

    from treegrpo.trainer import Trainer

    values = tiny_values(tmp_path, iterations=1, eval_every=0, eval_at_start=False, ema=0.0, mixed_precision="bf16",
                         parents_per_batch=64)
    values["model"]["full_finetune"] = True
    AcceleratorState._reset_state(reset_partial_state=True)  # the process-wide state fixes its precision once
    try:
        trainer = Trainer(resolve_config(values, [f"output_dir={tmp_path / 'run'}"]), run_dir=tmp_path / "run")
        _check_one_precision(trainer)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _check_one_precision(trainer: Any) -> None:
    seen: list[tuple[bool, torch.dtype]] = []
    projection = trainer.backbone.denoiser.transformer_blocks[0].attn.to_q
    projection.register_forward_hook(lambda module, inputs, output: seen.append((torch.is_autocast_enabled("cpu"), output.dtype)))
    metrics = trainer.run_iteration(0).metrics
    assert seen and all(dtype == torch.bfloat16 for _, dtype in seen)  # rollout and update alike
    assert metrics["ratio_min"] == metrics["ratio_max"] == 1.0 and metrics["optimizer_steps"] == 1


class FailsOnce:
    """A reward that breaks on its first call (a set-up or first-evaluation failure), then scores."""

    calls = 0

    def __call__(self, images: Any, prompts: Any) -> Any:
        import torch

        FailsOnce.calls += 1
        if FailsOnce.calls == 1:
            raise RuntimeError("reward server not up yet")
        return torch.zeros(images.shape[0])


def test_a_run_that_trained_nothing_does_not_block_its_retry(tmp_path: Path) -> None:
    """A first evaluation that fails leaves config.yaml and tensorboard/; the same command used to refuse the folder
    ("already holds a run") and --resume to fail for lack of a checkpoint. Now the same command starts it again."""
    from treegrpo.trainer.launch import train as launch_train
    from treegrpo.trainer.setup import find_resume_checkpoint

    values = tiny_values(tmp_path, iterations=1, eval_every=0, eval_at_start=True, ema=0.0)
    values["reward"] = "tests.test_trainer:FailsOnce"
    folder = tmp_path / "run"
    cfg = resolve_config(values, [f"output_dir={folder}"])
    FailsOnce.calls = 0
    with pytest.raises(RewardOutputError, match="not up yet"):  # a user's reward failing is one line
        launch_train(cfg)
    assert (folder / "config.yaml").is_file() and not (folder / "metrics.jsonl").exists()
    with pytest.raises(Exception, match="no iteration finished there; nothing is lost by starting again"):
        find_resume_checkpoint(folder, explicit=True)
    records = launch_train(cfg)  # the same command
    assert len(records) == 1 and (folder / "final").is_dir()
    with pytest.raises(Exception, match="already holds a run"):  # a run that trained is still protected
        launch_train(resolve_config(values, [f"output_dir={folder}", "train.iterations=2", "seed=1"]))


def test_epoch_is_the_pass_the_iterations_prompts_came_from(tmp_path: Path) -> None:
    """A pool of 5 prompts (none held out), 2 per iteration: iterations draw 0-1, 2-3, 4|0, 1-2, 3-4 and
    then the third pass; epoch used to flip one iteration early (when a draw ended a pass exactly)."""
    values = tiny_values(tmp_path, iterations=6, eval_every=0, eval_at_start=False, ema=0.0, checkpoint_every=0)
    values["data"]["num_eval_prompts"] = 0
    folder = tmp_path / "run"
    from treegrpo.trainer.launch import train as launch_train

    launch_train(resolve_config(values, [f"output_dir={folder}", "data.heldout=0"]))
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 0, 0, 1, 1, 2]
