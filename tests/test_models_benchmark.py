"""The backbone benchmark runs end to end (one repeat, small batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from benchmarks import backbone_step, gpu_iteration
from treegrpo.testing.tiny_models import torch_threads


def test_backbone_benchmark_runs_once(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    with torch_threads(1):
        rows = backbone_step.main(["--repeats", "1", "--warmup", "0", "--batch", "2", "--size", "16", "--out", str(out)])
    assert [row["family"] for row in rows] == ["sd3", "flux", "sd"]
    saved = json.loads(out.read_text())
    assert saved["results"] == rows and all(row["median_s"] > 0 for row in rows)


@pytest.mark.parametrize(("family", "guidance"), [("qwenimage", None), ("flux2", None), ("zimage", None),
                                               ("flux_kontext", 2.5), ("qwenimage_edit", 4.0), ("sana", None),
                                               ("ltx2", None),
                                               ("wan_i2v", 5.0),
                                               ("hunyuanvideo15", 6.0)])
def test_backbone_benchmark_and_gpu_iteration_run_for_the_new_families(family: str, guidance: Optional[float],
                                                                       tmp_path: Path) -> None:
    """The node benchmark and the GPU-iteration script (tiny variant of the published architecture) run on CPU;
    the editing families' prompts carry a source picture."""
    with torch_threads(1):
        (row,) = backbone_step.main(["--families", family, "--repeats", "1", "--warmup", "0", "--batch", "2"])
    assert row["family"] == family and row["median_s"] > 0 and row["cfg"]
    payload = gpu_iteration.main(["--size", f"{family}_tiny", "--device", "cpu", "--dtype", "fp32", "--prompts", "1",
                                  "--warmup", "0", "--iterations", "1", "--flop-repeats", "1", "--methods", "treegrpo",
                                  *(["--guidance", str(guidance)] if guidance is not None else []), "--out", str(tmp_path)])
    (result,) = payload["results"]
    assert result["rollout_nfe"] == result["rollout_nfe_closed_form"] and result["extra"]["minibatch_flops"] > 0
