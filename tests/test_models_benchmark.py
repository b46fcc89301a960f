"""The backbone benchmark runs end to end (one repeat, small batch)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

from treegrpo.testing.tiny_models import torch_threads

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backbone_step.py"


def _load(script: Path) -> ModuleType:
    """Import a benchmark script (its folder on the path, for its sibling modules)."""
    sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_backbone_benchmark_runs_once(tmp_path: Path) -> None:
    module = _load(SCRIPT)
    out = tmp_path / "result.json"
    with torch_threads(1):
        rows = module.main(["--repeats", "1", "--warmup", "0", "--batch", "2", "--size", "16", "--out", str(out)])
    assert [row["family"] for row in rows] == ["sd3", "flux", "sd"]
    saved = json.loads(out.read_text())
    assert saved["results"] == rows and all(row["median_s"] > 0 for row in rows)


@pytest.mark.parametrize(("family", "guidance"), [("qwenimage", None), ("flux2", None), ("zimage", None),
                                               ("flux_kontext", 2.5), ("qwenimage_edit", 4.0)])
def test_backbone_benchmark_and_gpu_iteration_run_for_the_new_families(family: str, guidance: Optional[float],
                                                                       tmp_path: Path) -> None:
    """The node benchmark and the GPU-iteration script (tiny variant of the published architecture) run on CPU;
    the editing families' prompts carry a source picture."""
    step = _load(SCRIPT)
    with torch_threads(1):
        (row,) = step.main(["--families", family, "--repeats", "1", "--warmup", "0", "--batch", "2"])
    assert row["family"] == family and row["median_s"] > 0 and row["cfg"]
    gpu = _load(SCRIPT.parent / "gpu_iteration.py")
    payload = gpu.main(["--size", f"{family}_tiny", "--device", "cpu", "--dtype", "fp32", "--prompts", "1",
                        "--warmup", "0", "--iterations", "1", "--flop-repeats", "1", "--methods", "treegrpo",
                        *(["--guidance", str(guidance)] if guidance is not None else []), "--out", str(tmp_path)])
    (result,) = payload["results"]
    assert result["rollout_nfe"] == result["rollout_nfe_closed_form"] and result["extra"]["minibatch_flops"] > 0
