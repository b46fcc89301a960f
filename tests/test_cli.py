"""The command line: help, bad input (one line, exit code 2), config and toy commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from treegrpo.cli import main

COMMANDS = ("train", "sample", "eval", "report", "config", "toy", "demo")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in COMMANDS)
    for command in ("train", "sample", "eval", "report", "config", "toy"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "error" in err
    return err


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{prompts: {tmp_path / 'p.txt'}}}\n")
    assert "did you mean 'tree.k'" in _one_line_error(capsys, ["train", str(config), "tree.kk=3"])
    assert "does not exist" in _one_line_error(capsys, ["train", str(tmp_path / "missing.yaml")])
    assert "no config given" in _one_line_error(capsys, ["train"])
    assert "bad value for 'train.lr'" in _one_line_error(capsys, ["eval", str(config), "train.lr=x"])
    assert "not a run folder" in _one_line_error(capsys, ["report", str(tmp_path / "nope")])
    assert "flow_grpo" in _one_line_error(capsys, ["config", "--show-defaults", "--method", "flow"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert "--overwrite" in _one_line_error(capsys, ["train", str(config), "--output-dir", str(run)])
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    with pytest.raises(SystemExit) as done:
        main(["bogus"])
    assert done.value.code == 2


def test_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--show-defaults", "--method", "flow_grpo"]) == 0
    out = capsys.readouterr().out
    assert "schedule: flat" in out and "kl_beta: 0.04" in out


def test_toy_prints_reward_before_and_after(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toy", "--iterations", "2"]) == 0
    assert "treegrpo: reward" in capsys.readouterr().out


def test_contradicting_prompt_sources_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    out = ["--output-dir", str(tmp_path / "run")]
    assert "both name the training prompts" in _one_line_error(capsys, ["train", str(config), f"data.prompts={prompts}", *out])
    error = _one_line_error(capsys, ["train", str(config), f"data.eval_prompts={prompts}", *out])
    assert "has its own held-out prompts" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loss.node_aggregation=man", "use one of mean, sum; did you mean 'mean'?"),
        ("advantage.std_scope=groop", "use one of group, global; did you mean 'group'?"),
        ("tree.window_placement=shifted", "did you mean 'shifting'?"),
        ("sampling.sde_type=cp", "use one of sde, cps"),
    ],
)
def test_typos_in_choices_are_refused_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    assert expected in _one_line_error(capsys, ["train", str(config), override, "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_an_internal_value_error_is_a_bug_and_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import treegrpo.cli

    def broken(args: object) -> int:
        raise ValueError("an internal bug")

    monkeypatch.setattr(treegrpo.cli, "cmd_config", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["config", "--show-defaults"])


def test_step_reweight_is_refused_for_ddim_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from treegrpo.testing.tiny_models import tiny_pipeline

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    argv = ["train", f"model.path={tiny_pipeline('sd')}", f"data.prompts={prompts}", "reward=jpeg_compressibility",
            "data.prompts_per_iteration=1", "loss.step_reweight=true", "--output-dir", str(tmp_path / "run")]
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    capsys.readouterr()  # building the tiny pipeline may print library notices
    assert "models use DDIM: set it false" in _one_line_error(capsys, [argv[0], str(config), *argv[1:]])
    assert not (tmp_path / "run").exists()
