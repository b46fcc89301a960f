"""``treegrpo eval``, the evaluation table, on a tiny SD3 and a random LoRA: rows and columns, JSON + Markdown in
the run folder or ``--out``, the worst prompts, built-in prompt sets, one-line refusals before any model loads,
and GenEval's path through the reward server (a stub scorer)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import yaml

from treegrpo import prompt_sets
from treegrpo.cli import main
from treegrpo.prompts import prompt_metadata
from treegrpo.rewards.server import make_server
from treegrpo.testing.tiny_models import TINY_MAX_SEQUENCE_LENGTH, tiny_pipeline

CHEAP = "jpeg_compressibility,jpeg_incompressibility"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run folder as training leaves it for ``eval``: RUN/config.yaml (tiny SD3, 4 steps) and RUN/final (a LoRA
    with random weights, so the trained row differs from the base's)."""
    from treegrpo.config import load_config
    from treegrpo.models.loading import load_backbone

    folder = tmp_path_factory.mktemp("eval") / "run"
    folder.mkdir()
    model = {"path": str(tiny_pipeline("sd3")), "dtype": "fp32", "device": "cpu", "height": 16, "width": 16,
             "max_sequence_length": TINY_MAX_SEQUENCE_LENGTH, "lora": {"rank": 4, "alpha": 4}}
    values = {"model": model, "data": {"prompts": "builtin:drawbench", "num_eval_prompts": 3},
              "sampling": {"steps": 4, "guidance_scale": 2.0}, "reward": "jpeg_compressibility"}
    (folder / "config.yaml").write_text(yaml.safe_dump(values))
    backbone = load_backbone(load_config(folder / "config.yaml").model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in backbone.trainable_parameters():
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    backbone.save_trained(folder / "final")
    yield folder


def _eval(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    code = main(["eval", *words])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_the_table_has_a_row_per_model_and_a_column_per_reward(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval(capsys, str(run / "config.yaml"), "data.prompt_field=caption",  # the training files' field: ignored
                "--trained", str(run / "final"), "--prompts", "builtin:drawbench",
                "--num-prompts", "6", "--rewards", CHEAP, "--per-prompt", "2")
    assert "| model | jpeg_compressibility | jpeg_incompressibility |" in out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert {"base", "trained", "trained - base"} <= set(rows) and rows["base"].count(" ± ") == 2
    assert "### jpeg_compressibility: the 2 lowest scoring prompts (trained)" in out
    assert "| # | prompt | category | trained | base |" in out and "| Colors |" in out
    written = json.loads((run / "eval-drawbench.json").read_text())  # --trained RUN/final: into the run folder
    assert (run / "eval-drawbench.md").read_text() == out.split("wrote ")[0]
    assert written["num_prompts"] == 6 and written["rewards"] == CHEAP.split(",")
    table = written["table"]
    base, trained, difference = (table[row]["jpeg_compressibility"] for row in ("base", "trained", "trained - base"))
    assert difference["mean"] == pytest.approx(trained["mean"] - base["mean"], abs=1e-6)
    assert base["n"] == 6 and base["se"] > 0 and trained["mean"] != base["mean"]
    first = written["per_prompt"][0]
    assert first["prompt"] == "A red colored car." and first["metadata"] == {"category": "Colors"}
    assert set(first) == {"prompt", "metadata", "base", "trained"}


def test_builtin_eval_prompts_of_the_config_and_an_out_folder(run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval(capsys, str(run / "config.yaml"), "data.eval_prompts=builtin:geneval", "--rewards",
                "jpeg_compressibility", "--out", str(tmp_path) + "/")
    assert "3 prompts of `builtin:geneval`" in out and "trained" not in out.split("\n\n", 2)[2]
    written = json.loads((tmp_path / "eval-geneval.json").read_text())
    assert written["trained"] is None and set(written["table"]) == {"base"}
    assert [p["metadata"]["tag"] for p in written["per_prompt"]] == ["single_object"] * 3
    assert written["group_field"] == "tag" and written["by_group"]["base"]["single_object"]["jpeg_compressibility"][
        "n"] == 3


@pytest.mark.parametrize(("words", "expected"), [
    (["--rewards", "hpsv3"], "unknown reward 'hpsv3'; did you mean 'hpsv2'?"),
    (["--prompts", "builtin:drawbenh"], "unknown prompt set; did you mean 'drawbench'?"),
    (["--num-prompts", "0"], "--num-prompts must be at least 1"),
    (["--trained", "/nonexistent/final"], "is not a folder"),
])
def test_bad_input_is_one_line_before_any_model_loads(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], words: list[str],
                                                      expected: str) -> None:
    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("treegrpo.cli.load_for_inference", no_model)
    code = main(["eval", str(run / "config.yaml"), *words, "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not list(tmp_path.iterdir())


class _GenEvalStub:
    """What a GenEval scorer served from its own environment sees: each prompt's GenEval record in ``metadata``."""

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([float(len((prompt_metadata(p) or {}).get("include", [])) == 1) for p in prompts])


def test_geneval_scored_through_the_reward_server(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server(_GenEvalStub(), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        remote = f"eval.rewards={{remote: {{url: '{server.url}', name: geneval, retries: 0}}}}"
        out = _eval(capsys, str(run / "config.yaml"), remote, "--prompts", "builtin:geneval", "--num-prompts", "4",
                    "--rewards", "remote,jpeg_compressibility", "--out", str(tmp_path / "geneval.json"))
    finally:
        server.shutdown()
        server.server_close()
    assert "| model | geneval | jpeg_compressibility |" in out
    expected = [float(len(p.metadata["include"]) == 1) for p in prompt_sets.load("geneval")[:4]]
    written = json.loads((tmp_path / "geneval.json").read_text())
    assert [p["base"]["geneval"] for p in written["per_prompt"]] == expected
    assert (tmp_path / "geneval.md").is_file()


def test_eval_draws_the_trainers_held_out_noise_for_its_first_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's promise: `treegrpo eval`'s first CHUNK prompts see the noise of the trainer's evaluation."""
    import torch

    from treegrpo import eval_table
    from treegrpo.config import resolve_config
    from treegrpo.trainer import evaluation

    seeds: list[tuple[str, int]] = []

    def fake_sample(backbone: object, prompts: list[str], *, seed: int, **_: object) -> torch.Tensor:
        seeds.append((prompts[0], seed))
        return torch.zeros(len(prompts), 3, 2, 2)

    def fake_rewards(images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.zeros(len(prompts)), {"r": torch.zeros(len(prompts))}

    monkeypatch.setattr(evaluation, "sample_images", fake_sample)
    cfg = resolve_config({"model": {"path": "builtin:shapes"}, "data": {"builtin": "shapes", "eval_seed": 5}, "reward": "shapes"})
    prompts = [f"p{i}" for i in range(eval_table.CHUNK + 1)]
    evaluation.evaluate(object(), fake_rewards, prompts[: eval_table.CHUNK], steps=2, guidance_scale=1.0,  # type: ignore[arg-type]
                        seed=cfg.data.eval_seed, max_batch=8)
    eval_table.score_prompts(object(), fake_rewards, prompts, cfg)
    trainer_seed, first_chunk, second_chunk = (seed for _, seed in seeds)
    assert first_chunk == trainer_seed and second_chunk != trainer_seed
