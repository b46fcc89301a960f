"""Built-in prompt sets, named ``builtin:NAME`` wherever a prompt source is (``data.prompts``,
``data.eval_prompts``, ``treegrpo eval --prompts``, ``treegrpo sample --prompts``).

The papers evaluate on fixed prompt sets; shipping their exact text (where the licence allows it)
makes a result here comparable to theirs without a download. Each prompt is a
:class:`~treegrpo.prompts.PromptRecord`: the exact text with the set's fields as ``metadata``
(DrawBench's ``category``, GenEval's ``tag`` / ``include`` / ``exclude``, HPDv2's ``style``).
Sources, commits and licences: ``README.md`` beside this file.

Sets whose licence does not allow shipping them, or that could not be fetched here, are read from
the user's own copy: a folder named by ``$TREEGRPO_PROMPT_SETS`` (and, for HPDv2, the Hugging Face
cache); a missing copy is a one-line :class:`~treegrpo.prompts.DataError` saying where to get it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from treegrpo.errors import ConfigError, did_you_mean
from treegrpo.prompts import DataError, PromptRecord

PREFIX = "builtin:"
"""What marks a prompt source as a built-in set (``builtin:drawbench``)."""
USER_COPIES = "TREEGRPO_PROMPT_SETS"
"""The environment variable naming the folder that holds the user's copies of the sets not shipped."""
HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
"""HPDv2's benchmark styles, one ``benchmark/<style>.json`` each (``builtin:hpdv2/<style>``)."""


@dataclass(frozen=True)
class PromptSet:
    """One named set: what it is, how many prompts, where it came from, under which licence, how it is read."""

    name: str
    description: str
    count: Optional[int]
    """Prompts in the set (``None``: the user's copy decides)."""
    source: str
    licence: str
    read: Callable[[], list[PromptRecord]]
    shipped: bool = True


def _package_text(file: str) -> str:
    """A data file shipped beside this module, as text."""
    return (resources.files(__package__ or "treegrpo.prompt_sets") / file).read_text(encoding="utf-8")


def _lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, each kept exactly (only the line break removed)."""
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


def _drawbench() -> list[PromptRecord]:
    """DrawBench's CSV (``Prompts,Category``); the category's stray trailing space (``Gary Marcus et al. ``) dropped."""
    rows = csv.DictReader(io.StringIO(_package_text("drawbench.csv"), newline=""))
    return [PromptRecord(row["Prompts"], {"category": row["Category"].strip()}) for row in rows]


def _jsonl_records(text: str, source: str) -> list[PromptRecord]:
    """GenEval's metadata lines: the ``prompt`` is the text, every other field (``tag``, ``include``, ...) metadata."""
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise DataError(f"{source}:{number} has no string field 'prompt'; it is not GenEval's metadata file")
        records.append(PromptRecord(record["prompt"], {k: v for k, v in record.items() if k != "prompt"}))
    return records


def _geneval() -> list[PromptRecord]:
    return _jsonl_records(_package_text("geneval.jsonl"), "geneval.jsonl")


def _ocr() -> list[PromptRecord]:
    return [PromptRecord(line, {}) for line in _lines(_package_text("ocr.txt"))]


# ----------------------------------------------------------------------------- the user's own copies


def _user_file(relative: str) -> Optional[Path]:
    """``$TREEGRPO_PROMPT_SETS/relative`` when the variable is set and the file exists."""
    folder = os.environ.get(USER_COPIES, "").strip()
    if not folder:
        return None
    file = Path(folder).expanduser() / relative
    return file if file.is_file() else None


def _hf_cached(repo: str, filename: str) -> Optional[Path]:
    """A dataset file already in the Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, repo_type="dataset")
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hpdv2_file(style: str) -> Optional[Path]:
    """HPDv2's ``benchmark/<style>.json``: the user's folder, the Hugging Face cache, or hpsv2's own cache."""
    hpsv2_root = Path(os.environ.get("HPS_ROOT", "~/.cache/hpsv2")).expanduser()
    hpsv2_copy = hpsv2_root / "datasets" / "benchmark" / f"{style}.json"
    return (_user_file(f"hpdv2/{style}.json") or _hf_cached("zhwang/HPDv2", f"benchmark/{style}.json")
            or (hpsv2_copy if hpsv2_copy.is_file() else None))


def _hpdv2(styles: tuple[str, ...]) -> Callable[[], list[PromptRecord]]:
    def read() -> list[PromptRecord]:
        records: list[PromptRecord] = []
        for style in styles:
            file = _hpdv2_file(style)
            if file is None:
                name = "hpdv2" if len(styles) > 1 else f"hpdv2/{style}"
                raise DataError(
                    f"builtin:{name} reads HPDv2's benchmark prompts, which are not shipped: run `huggingface-cli "
                    f"download zhwang/HPDv2 --repo-type dataset --include 'benchmark/*.json'` (found in the Hugging "
                    f"Face cache then) or put {style}.json in ${USER_COPIES}/hpdv2/"
                )
            prompts = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise DataError(f"{file} is not HPDv2's benchmark file (a JSON list of prompts); replace it")
            records += [PromptRecord(prompt, {"style": style}) for prompt in prompts]
        return records

    return read


def _pickscore() -> list[PromptRecord]:
    file = _user_file("pickscore/test.txt")
    if file is None:
        raise DataError(
            "builtin:pickscore is not shipped (Pick-a-Pic's captions state no licence): set "
            f"{USER_COPIES} to a folder holding pickscore/test.txt, e.g. a Flow-GRPO checkout's dataset/ folder "
            "(github.com/yifan123/flow_grpo), or pass that file as the prompts"
        )
    return [PromptRecord(line, {}) for line in _lines(file.read_text(encoding="utf-8"))]


_FLOW_GRPO = "yifan123/flow_grpo@ac4c86e8cae021841f1fde853d340e0db67690dd"
SETS: dict[str, PromptSet] = {
    "drawbench": PromptSet(
        "drawbench", "DrawBench (Imagen): 200 prompts in 11 categories", 200,
        "Imagen's DrawBench sheet, as mwomick/VaReSynth@f90470975e07e8477a7fcb99e949051859466880:data/DrawBench.csv",
        "none stated by its authors (a public benchmark)", _drawbench),
    "geneval": PromptSet(
        "geneval", "GenEval's evaluation prompts with their objects (6 tags)", 553,
        "djghosh13/geneval@af4902f24d3ca90ebbb446dd9891a59e0f82725f:prompts/evaluation_metadata.jsonl", "MIT",
        _geneval),
    "ocr": PromptSet("ocr", "Flow-GRPO's text-rendering test prompts", 1018, f"{_FLOW_GRPO}:dataset/ocr/test.txt",
                     "MIT", _ocr),
    "pickscore": PromptSet(
        "pickscore", "Flow-GRPO's PickScore test prompts (Pick-a-Pic v1 captions); your own copy", None,
        f"{_FLOW_GRPO}:dataset/pickscore/test.txt (2048 prompts)", "Pick-a-Pic: none stated", _pickscore,
        shipped=False),
    "hpdv2": PromptSet("hpdv2", "HPDv2's benchmark prompts, 4 styles; your own copy", None,
                       "Hugging Face dataset zhwang/HPDv2:benchmark/<style>.json", "Apache-2.0",
                       _hpdv2(HPDV2_STYLES), shipped=False),
    **{f"hpdv2/{style}": PromptSet(f"hpdv2/{style}", f"HPDv2's {style} benchmark prompts; your own copy", None,
                                   f"Hugging Face dataset zhwang/HPDv2:benchmark/{style}.json", "Apache-2.0",
                                   _hpdv2((style,)), shipped=False)
       for style in HPDV2_STYLES},
}
"""Every built-in set by name."""


def names() -> list[str]:
    """The valid ``builtin:`` names."""
    return list(SETS)


def is_builtin(source: Any) -> bool:
    """Whether a prompt source names a built-in set (``builtin:...``)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def prompt_set(name: str, key: Optional[str] = None) -> PromptSet:
    """The set named ``name`` (with or without ``builtin:``); an unknown name is a one-line ConfigError naming
    ``key`` (the setting that gave it, when given) and listing the valid names."""
    bare = name.removeprefix(PREFIX)
    if bare not in SETS:
        where = f"{key}={PREFIX}{bare}: unknown prompt set" if key else f"unknown prompt set {PREFIX}{bare}"
        raise ConfigError(f"{where}{did_you_mean(bare, SETS)} (built-in sets: {', '.join(PREFIX + n for n in SETS)})")
    return SETS[bare]


def check_sources(sources: Mapping[str, Optional[str]], prompt_field: str, default_field: str) -> None:
    """``builtin:`` sources (by the setting that names them) name known sets, and a ``prompt_field`` other than
    ``default_field`` is refused when only built-in sets would read it (they hold just the prompts' text)."""
    for key, source in sources.items():
        if is_builtin(source):
            prompt_set(str(source), key)
    given = [source for source in sources.values() if source is not None]
    if given and all(is_builtin(source) for source in given) and prompt_field != default_field:
        raise ConfigError(f"data.prompt_field={prompt_field} has nothing to choose: built-in sets ({', '.join(given)}) "
                          "hold only the prompts' text; drop data.prompt_field")


def load(name: str) -> list[PromptRecord]:
    """Every prompt of the set ``name`` (``"drawbench"`` or ``"builtin:drawbench"``), in the source's order."""
    records = prompt_set(name).read()
    if not records:
        raise DataError(f"{PREFIX}{name.removeprefix(PREFIX)} holds no prompts; check your copy of it")
    return records


__all__ = ["HPDV2_STYLES", "PREFIX", "PromptRecord", "PromptSet", "SETS", "USER_COPIES", "check_sources", "is_builtin",
           "load", "names", "prompt_set"]
