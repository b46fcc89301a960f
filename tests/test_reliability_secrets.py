"""Secrets stay secret: API keys planted in the environment (the VLM judge's, W&B's, the hub's) are
used but never written to the run folder (config.yaml, metrics, evaluations, TensorBoard events,
model card, checkpoints), nor printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_trainer import tiny_values
from treegrpo.testing.fake_judge_server import FakeJudgeServer, Reply, chat
from treegrpo.config import resolve_config
from treegrpo.trainer import train

KEYS = {"JUDGE_API_KEY": "sk-judge-7f3a9c1e5b", "WANDB_API_KEY": "wandb-0d9e8c7b6a5f4e3d",
        "HF_TOKEN": "hf_plantedTOKEN1234567890"}


def test_planted_keys_reach_the_judge_and_no_file_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    with FakeJudgeServer(lambda request, call: Reply(payload=chat("Score: 7"))) as server:
        values = tiny_values(tmp_path, iterations=2, eval_every=2, log_with="tensorboard")
        values["eval"] = {"rewards": {"vlm_judge": {"weight": 1.0, "base_url": server.base_url, "model": "judge",
                                                    "api_key_env": "JUDGE_API_KEY", "timeout": 5.0, "retries": 1}}}
        folder = tmp_path / "run"
        train(resolve_config(values, [f"output_dir={folder}"]))
        used = {headers.get("Authorization") for headers in server.headers_seen}
    assert used == {f"Bearer {KEYS['JUDGE_API_KEY']}"}  # the key was in use: a test that can fail
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert len(files) > 10 and any("events.out.tfevents" in path.name for path in files)
    printed = capsys.readouterr()
    for value in KEYS.values():
        leaks = [str(path.relative_to(folder)) for path in files if value.encode() in path.read_bytes()]
        assert not leaks, f"{value} written to {leaks}"
        assert value not in printed.out and value not in printed.err
    assert "JUDGE_API_KEY" in (folder / "config.yaml").read_text()  # the variable's name is recorded, not its value
