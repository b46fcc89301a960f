"""``treegrpo sample`` on every registered family (tiny pipelines), and the model card's snippet for a video model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_likelihood_free import FAMILY_MODELS
from treegrpo.testing.tiny_models import tiny_pipeline
from treegrpo.cli import main
from treegrpo.models.registry import FAMILIES

SIZES: dict[str, dict[str, Any]] = {**FAMILY_MODELS, "sd": {"height": 16, "width": 16, "max_sequence_length": 16}}
EDITING = ("flux_kontext", "qwenimage_edit", "wan_i2v")


def _flags(family: str) -> list[str]:
    size = SIZES[family]
    return ["--height", str(size["height"]), "--width", str(size["width"]),
            "--max-sequence-length", str(size["max_sequence_length"])]


def test_every_registered_family_is_covered() -> None:
    assert set(FAMILIES) == set(SIZES) | set(EDITING)


@pytest.mark.parametrize("family", sorted(SIZES))
def test_sample_draws_a_grid_for_every_family(family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Wan used to crash in image_grid ("too many values to unpack"): clips give middle-frame PNGs and a video."""
    out = tmp_path / "grid.png"
    code = main(["sample", "--model", str(tiny_pipeline(family)), "--prompt", "a red cube", "--prompt", "two cats",
                 "--steps", "2", "--dtype", "fp32", "--out", str(out), *_flags(family)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and (tmp_path / "grid-captioned.png").is_file()
    if family in ("wan", "ltx2", "hunyuanvideo15"):
        videos = [p for p in tmp_path.iterdir() if p.suffix in (".mp4", ".gif")]
        assert len(videos) == 1 and videos[0].stat().st_size > 0 and "(2 clips)" in printed
    else:
        assert "(2 images)" in printed


@pytest.mark.parametrize("family", EDITING)
def test_sample_of_an_editing_family_without_a_source_image_is_one_line(family: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from treegrpo.testing.tiny_edit_models import build_tiny_qwenimage_edit

    if family == "qwenimage_edit":
        path = build_tiny_qwenimage_edit(tmp_path / "p")
    else:
        path = tiny_pipeline(family, **({"variant": "ti2v"} if family == "wan_i2v" else {}))
    capsys.readouterr()  # building the tiny pipeline prints bars
    height, width = ("16", "24") if family == "flux_kontext" else ("32", "64")
    code = main(["sample", "--model", str(path), "--prompt", "make it red", "--steps", "2", "--dtype", "fp32",
                 "--height", height, "--width", width, "--out", str(tmp_path / "g.png")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "needs a source image" in err[0], err


def test_a_video_models_card_uses_frames(tmp_path: Path) -> None:
    from treegrpo.hub import model_card

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (run / "config.yaml").write_text("model: {path: Wan-AI/Wan2.1-T2V-1.3B-Diffusers, height: 480, width: 832, "
                                     "num_frames: 33}\nsampling: {steps: 20, guidance_scale: 5.0}\nmethod: treegrpo\n")
    card = model_card(run, "WanPipeline")
    assert "from diffusers.utils import export_to_video" in card
    assert ('frames = pipe("a prompt", height=480, width=832, num_frames=33, num_inference_steps=20, '
            'guidance_scale=5.0).frames[0]') in card and ".images[0]" not in card
    assert f'pipe.load_lora_weights("{(run / "final").resolve()}")' in card
