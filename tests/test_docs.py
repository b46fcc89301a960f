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
