"""The backbone benchmark runs end to end (one repeat, small batch)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.tiny_models import torch_threads

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backbone_step.py"


def test_backbone_benchmark_runs_once(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("backbone_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    with torch_threads(1):
        rows = module.main(["--repeats", "1", "--warmup", "0", "--batch", "2", "--size", "16", "--out", str(out)])
    assert [row["family"] for row in rows] == ["sd3", "flux", "sd"]
    saved = json.loads(out.read_text())
    assert saved["results"] == rows and all(row["median_s"] > 0 for row in rows)
