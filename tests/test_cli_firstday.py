"""A researcher's first day with the command line (issue 19), each item through ``treegrpo.cli.main``.

One finished run (no YAML, W&B offline beside TensorBoard) is shared by the tests that read a run:
``sample --run``, ``push``, the model card, the report, the tracker keys.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from treegrpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny_shapes.yaml")
TINY = ["train.iterations=1", "data.prompts_per_iteration=2", "tree.trees=1", "sampling.steps=4",
        "data.num_eval_prompts=2", "train.eval_at_start=false", "train.progress=false"]
NO_YAML = ["model.path=builtin:shapes", "data.builtin=shapes", "reward=shapes", "model.dtype=fp32",
           "model.max_sequence_length=1", "model.lora.rank=4", "model.lora.alpha=4", "train.lr=3e-4"]
CAPTIONS = ["a red circle on the right", "a blue square on the left", "a green triangle on the left", "a yellow circle on the right"]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "error" in err, err
    return err


def _mode(file: Path) -> int:
    return stat.S_IMODE(file.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- a shared finished run


def wandb_records(file: Path) -> list[Any]:
    """The protobuf records of an offline W&B run file (a leveldb-style log of 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    buf, pos, out, parts = file.read_bytes(), 7, [], []
    while pos + 7 <= len(buf):
        left = 32768 - pos % 32768
        length, kind = int.from_bytes(buf[pos + 4 : pos + 6], "little"), buf[pos + 6]
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk = buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        parts = [chunk] if kind in (1, 2) else parts + [chunk]
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Item 4 (no YAML: defaults + overrides) with W&B offline beside TensorBoard: one finished 1-iteration run."""
    pytest.importorskip("wandb")
    run = tmp_path_factory.mktemp("shared") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_CONSOLE", "off")
        code = main(["train", *NO_YAML, "--output-dir", str(run), *TINY, "train.eval_at_start=true",
                     "train.log_with=tensorboard,wandb"])
    assert code == 0
    yield run


def test_train_without_yaml_uses_defaults_plus_overrides(finished_run: Path) -> None:
    config = (finished_run / "config.yaml").read_text()
    assert "path: builtin:shapes" in config and "builtin: shapes" in config and "reward: shapes" in config
    assert (finished_run / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_wandb_offline_run_gets_grouped_scalars_config_and_captioned_images(finished_run: Path) -> None:
    (file,) = finished_run.glob("wandb/offline-run-*/run-*.wandb")
    keys: dict[str, str] = {}
    config: list[str] = []
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                keys.setdefault(item.key or "/".join(item.nested_key), item.value_json)
        elif kind == "config":
            config += [item.key or "/".join(item.nested_key) for item in record.config.update]
    scalars = {key for key in keys if not key.startswith("_") and key.split("/")[0] in ("train", "eval", "time", "nfe")}
    assert {"train/reward_mean", "train/reward/shapes_mean", "train/loss", "train/optimizer_steps", "eval/score",
            "eval/shapes", "time/seconds", "time/rollout_seconds", "nfe/rollout_nfe", "nfe/training_nfe"} <= scalars
    assert {"train.lr", "tree.k", "sampling.steps", "output_dir"} <= set(config)
    captions = json.loads(keys["eval/samples/captions"])
    assert len(captions) == 2 and all(c.split()[0].replace(".", "").isdigit() and len(c.split()) > 2 for c in captions)
    assert json.loads(keys["tree/captions"])[0]  # the tree picture names its prompt
    metrics = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward_mean" in metrics and "train/reward_mean" not in metrics  # metrics.jsonl keeps its keys


def test_unknown_tracker_is_refused_with_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = _one_line_error(capsys, ["train", CONFIG, "--output-dir", str(tmp_path / "run"), "train.log_with=tensorbord,wandb"])
    assert "train.log_with" in error and "did you mean 'tensorboard'" in error
    assert not (tmp_path / "run").exists()


def test_model_card_report_and_pictures(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = (finished_run / "final" / "README.md").read_text()
    for text in ("builtin:shapes", "treegrpo", "shapes", "eval/score", "load_lora_weights", "StableDiffusion3Pipeline",
                 "from_pretrained"):
        assert text in card, text
    assert (finished_run / "samples" / "step-000001-captioned.png").is_file()
    assert main(["report", str(finished_run)]) == 0
    page = (finished_run / "report.html").read_text()
    assert '<table class="evals"' in page and "<th>score</th>" in page and '{"step"' not in page
    assert "step-000001-captioned.png" in page
    last = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[-1])
    evals = [json.loads(line) for line in (finished_run / "eval.jsonl").read_text().splitlines()]
    for value in [v for record in (last, *evals) for v in record.values() if isinstance(v, float)]:
        assert f"<td>{value:.4g}</td>" in page, value  # one rounding for a value wherever the page shows it


def test_push_uploads_final_with_its_card(finished_run: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: Any, **kwargs: Any) -> str:
        calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self: Any, **kwargs: Any) -> None:
        calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())}))

    def upload_file(self: Any, **kwargs: Any) -> None:
        calls.append(("upload_file", kwargs))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")  # logged in
    local_card = (finished_run / "final" / "README.md").read_text()
    assert main(["push", str(finished_run), "--repo", "me/shapes-lora", "--private"]) == 0
    assert calls[0] == ("create_repo", {"repo_id": "me/shapes-lora", "private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["files"] == ["README.md", "pytorch_lora_weights.safetensors"]
    assert calls[1][1]["ignore_patterns"] == ["README.md"]  # the card goes up with the repo's own address
    uploaded = calls[2][1]["path_or_fileobj"].decode()
    assert calls[2][1]["path_in_repo"] == "README.md" and 'pipe.load_lora_weights("me/shapes-lora")' in uploaded
    assert (finished_run / "final" / "README.md").read_text() == local_card  # the local card keeps the local path
    assert str((finished_run / "final").resolve()) in local_card and "THIS_FOLDER_OR_REPO" not in local_card
    assert 'pipe("a prompt", num_inference_steps=4, guidance_scale=4.5, max_sequence_length=1).images[0]' in local_card
    assert "me/shapes-lora" in capsys.readouterr().out
    assert "holds no exported weights" in _one_line_error(capsys, ["push", str(finished_run / "checkpoints"), "--repo", "me/x"])


def test_sample_reuses_a_run_and_takes_a_prompt_field(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import treegrpo.trainer.evaluation as evaluation

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": caption}) + "\n" for caption in CAPTIONS[:2]))
    error = _one_line_error(capsys, ["sample", "--run", str(finished_run), "--prompts", str(prompts), "--out", "x.png"])
    assert "set --prompt-field" in error
    seen: dict[str, Any] = {}
    original = evaluation.sample_images

    def recording(backbone: Any, prompts: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, lora=hasattr(backbone.denoiser, "peft_config"))
        return original(backbone, prompts, **kwargs)

    monkeypatch.setattr(evaluation, "sample_images", recording)
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(finished_run), "--prompts", str(prompts), "--prompt-field", "text", "--out", str(out)]) == 0
    assert seen["steps"] == 4 and seen["guidance_scale"] == 4.5 and seen["lora"]  # the run's steps, guidance and RUN/final
    assert out.is_file() and (tmp_path / "grid-captioned.png").is_file()


def test_resuming_a_finished_run_says_so_and_exits_0(finished_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = (finished_run / "metrics.jsonl").read_text()
    with caplog.at_level("INFO", logger="treegrpo"):
        assert main(["train", "--resume", str(finished_run)]) == 0
    assert f"{finished_run.resolve()} already finished 1 iterations" in caplog.text and "train.iterations=2" in caplog.text
    assert (finished_run / "metrics.jsonl").read_text() == before


# ----------------------------------------------------------------------------- interrupt, resume elsewhere


def test_interrupt_prints_the_command_that_resumes_this_run_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Items 1 (overrides after options), 2 (the resume hint), 3 (absolute paths) and 10 (file modes)."""
    from treegrpo.trainer import Trainer

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "prompts.txt").write_text("\n".join(CAPTIONS) + "\n")
    monkeypatch.chdir(here)
    original, calls = Trainer.run_iteration, []

    def interrupted(self: Trainer, iteration: int) -> Any:
        calls.append(iteration)
        result = original(self, iteration)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the first iteration
        return result

    monkeypatch.setattr(Trainer, "run_iteration", interrupted)
    code = main(["train", CONFIG, "--output-dir", "runs/x", *TINY, "train.iterations=2", "data.builtin=null",
                 "data.prompts=prompts.txt", "data.heldout=2"])
    err = capsys.readouterr().err
    assert code == 130, err
    run = (here / "runs" / "x").resolve()
    command = f"treegrpo train --resume {run}"
    assert f"`{command}`" in err and "CONFIG" not in err
    saved = (run / "config.yaml").read_text()
    assert f"prompts: {here.resolve() / 'prompts.txt'}" in saved and f"output_dir: {run}" in saved
    assert "path: builtin:shapes" in saved

    monkeypatch.chdir(elsewhere)
    assert main(command.split()[1:]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and calls == [0, 1]
    expected = 0o666 & ~_umask()
    assert _mode(run / "final" / "pytorch_lora_weights.safetensors") == expected
    assert _mode(run / "checkpoints" / "step-000002" / "trained.safetensors") == expected
    assert not (elsewhere / "runs").exists()


# ----------------------------------------------------------------------------- refusals before anything is written


def test_resume_auto_without_a_checkpoint_refuses_a_started_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that trained (a metrics line) but kept no checkpoint is refused; one that finished no iteration (only
    its first evaluation) is not a run and starts again (RUN/eval.jsonl rewritten)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.jsonl").write_text('{"step": 0, "eval/score": 0.5}\n')
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    error = _one_line_error(capsys, ["train", CONFIG, "--output-dir", str(run), "--resume", "auto", *TINY])
    assert "no complete checkpoint" in error and "--overwrite" in error
    assert sorted(p.name for p in run.iterdir()) == ["eval.jsonl", "metrics.jsonl"]
    (run / "metrics.jsonl").unlink()
    assert main(["train", CONFIG, "--output-dir", str(run), "--resume", "auto", *TINY]) == 0
    assert (run / "final").is_dir() and '"step": 0, "eval/score": 0.5' not in (run / "eval.jsonl").read_text()


def test_output_dir_that_is_not_a_run_is_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "my_model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    for extra in ([], ["--overwrite"], ["--resume", "auto"]):
        error = _one_line_error(capsys, ["train", CONFIG, "--output-dir", str(model), *TINY, *extra])
        assert "is not empty" in error and "holds no treegrpo run" in error
    assert [p.name for p in model.iterdir()] == ["model_index.json"]


def test_branch_grpo_scales_its_splits_to_the_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = _one_line_error(capsys, ["train", CONFIG, "method=branch_grpo", "tree.split_steps=[0,7]", *TINY,
                                     "--output-dir", str(tmp_path / "bad")])
    assert "tree.split_steps" in error and "outside 0..3" in error
    run = tmp_path / "run"
    assert main(["train", CONFIG, "method=branch_grpo", *TINY, "--output-dir", str(run)]) == 0
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["plan"] == "B3 B3 B3 S"  # [0, 2, 4, 6] of 10 steps -> [0, 1, 2] of 4 (tiny_shapes sets k=3)


def test_library_noise_is_silenced_and_no_bars_without_a_tty(tmp_path: Path) -> None:
    """Prompts from a dataset folder never built before (datasets prints its split bars then)."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "prompts"
    folder.mkdir()
    datasets.Dataset.from_dict({"prompt": CAPTIONS}).to_parquet(str(folder / "train.parquet"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "treegrpo", "train", CONFIG, "--output-dir", str(tmp_path / "run"), *TINY,
               "train.progress=true", "data.builtin=null", f"data.prompts={folder}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cache").is_dir()  # the dataset was built in this run
    for noise in ("torchvision", "Loading", "Generating", "it/s]", "%|", "Warning", "warn"):
        assert noise not in done.stderr, done.stderr
    assert "step 1/1" in done.stderr and "eval step 1" in done.stderr


def test_demo_takes_overrides_after_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    error = _one_line_error(capsys, ["demo", "--iterations", "1", "tree.kk=3", "--seed", "1"])
    assert "unknown config key 'tree.kk'" in error and "did you mean 'tree.k'" in error


def test_a_lora_on_another_family_is_a_one_line_error(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shapes run's SD3 LoRA on a FLUX model: its layer names exist there with other shapes (a state-dict
    traceback before); on a model whose layers it does not name diffusers loaded nothing and sampled the base."""
    from treegrpo.testing.tiny_models import tiny_pipeline

    code = main(["sample", "--model", str(tiny_pipeline("flux")), "--trained", str(finished_run / "final"),
                 "--prompt", "a red circle", "--steps", "2", "--height", "16", "--width", "16", "--dtype", "fp32",
                 "--out", str(finished_run.parent / "wrong.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "this flux model (FluxPipeline)" in err[0] and "trained on builtin:shapes" in err[0]
    assert not (finished_run.parent / "wrong.png").exists()


def test_a_lora_matching_no_layer_is_a_one_line_error(finished_run: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The silent case: diffusers finds no key of the LoRA in the model, logs it and loads nothing."""
    from treegrpo import cli

    class Backbone:
        family, pipe, denoiser = "sd", type("StableDiffusionPipeline", (), {"load_lora_weights": lambda self, f: None})(), \
            __import__("torch").nn.Linear(2, 2)

    with pytest.raises(cli.CliError) as error:
        cli.apply_trained(Backbone(), finished_run / "final")
    assert "matches no layer of this sd model (StableDiffusionPipeline)" in str(error.value)
    assert "trained on builtin:shapes" in str(error.value) and "\n" not in str(error.value)



def test_wandb_without_a_login_is_refused_before_anything_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's no-YAML example with wandb and no login used to load the model and die in wandb.init."""
    from treegrpo.trainer.trackers import wandb_logged_in

    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    code = main(["train", *NO_YAML, "--output-dir", str(tmp_path / "run"), *TINY, "train.log_with=tensorboard,wandb"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "W&B is not logged in" in err[0] and "WANDB_MODE=offline" in err[0], err
    assert not (tmp_path / "run").exists()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_logged_in({"HOME": str(tmp_path)}) and wandb_logged_in({"WANDB_MODE": "offline", "HOME": "/nonexistent"})
    assert not wandb_logged_in({"HOME": str(tmp_path), "WANDB_BASE_URL": "https://wandb.example.com"})


def test_the_resume_line_of_a_multi_process_run_launches_every_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """It omitted --multi_gpu, so it started one process and was refused; and every rank printed the stop line."""
    import signal as signals

    from treegrpo import cli
    from treegrpo.trainer import TrainingInterrupted
    from treegrpo.trainer.run_dir import resume_command

    assert resume_command(tmp_path, 2) == f"accelerate launch --multi_gpu --num_processes 2 -m treegrpo train --resume {tmp_path}"
    assert resume_command(tmp_path) == f"treegrpo train --resume {tmp_path}"
    stop = TrainingInterrupted(signals.SIGINT, 3, tmp_path / "checkpoints" / "step-000003", resume_command(tmp_path, 2))
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert cli._stopped("train", stop) == 130
        assert len([line for line in capsys.readouterr().err.splitlines() if line.strip()]) == lines


def test_tensorboard_gets_the_captioned_grid(finished_run: Path) -> None:
    """The README says evaluation images are captioned; TensorBoard had only the bare grid."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (finished_run / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert "eval/samples" in tags and "eval/samples_captioned" in tags
    bare, captioned = accumulator.Images("eval/samples")[0], accumulator.Images("eval/samples_captioned")[0]
    assert captioned.height > bare.height  # the captions add rows of text


def test_push_refuses_a_bad_repo_id_no_login_and_an_unreachable_hub_in_one_line(
        finished_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Each was a traceback (HFValidationError, LocalTokenNotFoundError, a connection error after retries)."""
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    card = (finished_run / "final" / "README.md").read_text()
    assert "is not a Hub repo id" in _one_line_error(capsys, ["push", str(finished_run), "--repo", "me//two words"])
    assert "not logged in" in _one_line_error(capsys, ["push", str(finished_run), "--repo", "me/x"])
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_planted")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the client refuses to connect: no network needed for the test
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    err = _one_line_error(capsys, ["push", str(finished_run), "--repo", "me/x"])
    assert "cannot reach the Hugging Face Hub" in err and "push again" in err and "hf_planted" not in err
    assert (finished_run / "final" / "README.md").read_text() == card


def test_ocr_prompts_without_quoted_text_are_refused_before_the_model_loads(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """They failed with a traceback at the first scoring, after the model had loaded and the folder was written."""
    pytest.importorskip("rapidocr_onnxruntime")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a sign saying "OPEN"\na cat on a mat\n', encoding="utf-8")
    run = tmp_path / "run"
    err = _one_line_error(capsys, ["train", CONFIG, "--output-dir", str(run), *TINY, "reward=ocr", "data.builtin=null",
                                   f"data.prompts={prompts}", "data.prompts_per_iteration=1"])
    assert "ocr reward, training prompt 2: prompt 'a cat on a mat' has no text in double quotes" in err
    assert not run.exists()


@pytest.mark.parametrize("where", ["/proc/treegrpo-run", "/sys/treegrpo/run"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(
        where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only place was found at the first save (as root, permissions alone never refuse: these file systems do)."""
    top = "/" + where.split("/")[1]
    if not Path(top).is_dir():
        pytest.skip(f"no {top} here")
    err = _one_line_error(capsys, ["train", CONFIG, "--output-dir", where, *TINY])
    assert f"cannot write to {top} (" in err and "choose another --output-dir" in err


def test_a_judge_answering_404_ends_the_run_in_one_line_with_exit_2(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong judge model name (the server's 404) was a RuntimeError traceback (exit 1) at the first scoring."""
    from treegrpo.testing.fake_judge_server import FakeJudgeServer, Reply

    config = tmp_path / "judged.yaml"
    with FakeJudgeServer(lambda request, call: Reply(404, {"error": {"message": "model 'nope' does not exist"}})) as server:
        import yaml

        values = yaml.safe_load(Path(CONFIG).read_text())
        values["reward"] = {"vlm_judge": {"weight": 1.0, "base_url": server.base_url, "model": "nope", "timeout": 5.0,
                                          "retries": 0}}
        config.write_text(json.dumps(values))
        err = _one_line_error(capsys, ["train", str(config), "--output-dir", str(tmp_path / "run"), *TINY])
    assert "rejected the request (404)" in err and "model 'nope' does not exist" in err


def test_following_the_unsupported_pipeline_hint_with_sdxl_is_refused_before_loading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`model.family=sd` on an SDXL folder (the old hint's advice) loaded without text_encoder_2 and failed later."""
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    components = {"scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
                  "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                  "vae": ["diffusers", "AutoencoderKL"], "feature_extractor": [None, None], "image_encoder": [None, None]}
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline", **components}))
    base = ["train", CONFIG, "--output-dir", str(tmp_path / "run"), *TINY, f"model.path={sdxl}"]
    assert "StableDiffusionXLPipeline, which is not supported" in _one_line_error(capsys, base)
    err = _one_line_error(capsys, [*base, "model.family=sd", "method=ddpo"])
    assert "model.family=sd cannot load" in err and "text_encoder_2, tokenizer_2" in err
    assert not (tmp_path / "run").exists()
