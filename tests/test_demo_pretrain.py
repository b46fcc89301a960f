"""The demo base's pretraining resumes exactly (interrupted and resumed equals straight through) and continues a saved base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tools.shapes_base.pretrain as pretrain_module
from tools.shapes_base.pretrain import PretrainConfig, main, pretrain


def _tiny(**overrides: object) -> PretrainConfig:
    settings: dict = dict(steps=4, vae_steps=2, vae_batch=4, batch=4, warmup=2, eval_every_s=0, eval_prompts=2,
                          final_eval_prompts=2, sample_steps=2, checkpoint_every_s=1e-9)
    return PretrainConfig(**{**settings, **overrides})


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pretrain(tmp_path / "straight", _tiny(), threads=1, command="test")
    straight = load_file(str(tmp_path / "straight" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not (tmp_path / "straight" / "resume").exists()  # removed once the base is saved

    original, calls = pretrain_module.flow_loss, []

    def failing(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away during step 3
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrain_module, "flow_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "split", _tiny(), threads=1, command="test")
    monkeypatch.setattr(pretrain_module, "flow_loss", original)
    assert (tmp_path / "split" / "resume" / "state.json").exists()
    pretrain(tmp_path / "split", _tiny(), threads=1, command="test", resume=True)
    resumed = load_file(str(tmp_path / "split" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    card = (tmp_path / "split" / "README.md").read_text()
    assert "one_object" in card and "relation" in card and "--steps 4" in card


def test_resume_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "none"), "--resume"])
    assert "does not exist; start without --resume" in capsys.readouterr().err


def test_init_from_continues_the_saved_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pretrain(tmp_path / "first", _tiny(checkpoint_every_s=0), threads=1, command="first")
    # one more step at learning rate 0: the continued base must equal the saved one exactly
    pretrain(tmp_path / "more", _tiny(steps=1, lr=0.0, seed=1, checkpoint_every_s=0), threads=1, command="more",
             init_from=tmp_path / "first")
    for component in ("transformer", "vae"):
        first = load_file(str(tmp_path / "first" / component / "diffusion_pytorch_model.safetensors"))
        more = load_file(str(tmp_path / "more" / component / "diffusion_pytorch_model.safetensors"))
        for name in first:
            assert torch.equal(first[name], more[name]), (component, name)
    card = (tmp_path / "more" / "README.md").read_text()
    assert "5 steps (4 + 1 continued" in card and "first && more" in card


def test_init_from_needs_a_saved_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "out"), "--init-from", str(tmp_path / "missing")])
    assert "name a folder this script saved" in capsys.readouterr().err
