"""Docs that list code are checked against it: every registered family in the README's family table and in
ARCHITECTURE.md, every config recipe and registered reward named in the README."""

from __future__ import annotations

import re
from pathlib import Path

from treegrpo.models.registry import FAMILIES
from treegrpo.rewards import BUILTIN_REWARDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_every_family_is_in_the_readme_table_and_the_architecture() -> None:
    table = README.split("## Model families", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \| `(\w+Pipeline)`", table, flags=re.MULTILINE))
    for name, family in FAMILIES.items():
        assert (name, family.pipelines[0]) in rows, f"README family table lacks {name} ({family.pipelines[0]})"
        module = family.adapter.__module__.removeprefix("treegrpo.")
        assert f"`{module.replace('.', '/')}.py`" in ARCHITECTURE, f"ARCHITECTURE.md lacks {module}"


def test_every_registered_reward_and_recipe_is_named_in_the_readme() -> None:
    for name in BUILTIN_REWARDS:
        assert f"`{name}`" in README, f"README does not name the reward {name}"
    for recipe in sorted((ROOT / "configs" / "recipes").glob("*.yaml")):
        assert f"configs/recipes/{recipe.name}" in README, recipe.name


def test_every_config_key_is_in_the_readme_table() -> None:
    """The config reference covers the schema (``.x`` continues the previous key's section)."""
    import dataclasses

    from treegrpo.config import valid_keys

    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    mentioned: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        previous = None
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if token.startswith(".") and previous:
                mentioned.add(previous.rsplit(".", 1)[0] + token)
            else:
                mentioned.add(token)
                previous = token
    leaves = [key for key, hint in valid_keys().items() if not dataclasses.is_dataclass(hint)]
    missing = [key for key in leaves if key not in mentioned]
    assert not missing, f"README's config table lacks {missing}"


def test_every_module_is_placed_in_the_architecture_and_every_package_in_the_readme_layout() -> None:
    """A module added, moved or renamed must show in the docs that map the code (layers, Layout)."""
    package = ROOT / "src" / "treegrpo"
    layers = ARCHITECTURE.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for module in sorted(package.glob("*/*.py")) + sorted(package.glob("*.py")):
        if module.name in ("__init__.py", "__main__.py"):
            continue
        named = f"`{module.name}`" in layers or f"`{module.relative_to(package).as_posix()}`" in layers or (
            f"`{module.stem}`" in layers and module.parent.name == "trainer")
        assert named, f"docs/ARCHITECTURE.md's layer table does not place {module.relative_to(package)}"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"{folder.name}/" in layout, f"README's Layout does not show the package {folder.name}/"
        assert f"`{folder.name}/" in layers or folder.name in ("models", "rewards", "trainer", "demo"), folder.name
