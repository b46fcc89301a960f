"""The built-in demo task: procedurally drawn shapes, a programmatic reward and a tiny SD3 base."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent / "base"
"""The shipped base pipeline (``model.path: builtin:shapes``)."""
