"""Prompts: loading (.txt, .jsonl, HF datasets, the built-in sets ``builtin:NAME``, the built-in shapes
generator), a train / held-out split, and a seeded, resumable sampler whose position is saved in checkpoints.

The sampler walks through seeded permutations of the prompt pool, one per pass ("epoch"); its
whole state is ``(epoch, position)``, and the permutation of a pass is a pure function of
``(seed, epoch)``, so a resumed run draws exactly the prompts the uninterrupted run would have.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from treegrpo.config import DataConfig
from treegrpo.prompts import DataError, EditPrompt, PromptRecord, unreadable_image_reason


MAX_PROMPT_CHARACTERS = 20_000
"""A longer line is not a prompt (a minified file, a binary read as text): refused, naming the line."""


def _read_lines(file: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 text file; a byte-order mark and CRLF endings are
    accepted; invalid UTF-8, NUL bytes and over-long lines are one-line errors naming the line.

    Lines end at ``\n`` only: a prompt may contain Unicode line separators (U+2028) or form feeds.
    """
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{file}:{line} is not UTF-8 text (byte {error.start}); re-save the file as UTF-8, "
                        "one prompt per line") from None
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if "\x00" in line:
            raise DataError(f"{file}:{number} holds a NUL byte: a binary file, not prompts; point data.prompts at a "
                            "UTF-8 text file")
        if len(line) > MAX_PROMPT_CHARACTERS:
            raise DataError(f"{file}:{number} is {len(line)} characters long (at most {MAX_PROMPT_CHARACTERS}): not a "
                            "prompt; check the file (one prompt per line)")
        lines.append((number, line))
    return lines


def load_txt(file: Path) -> list[str]:
    """Non-empty, stripped lines of a text file."""
    return [line.strip() for _, line in _read_lines(file) if line.strip()]


def _edit_prompt(file: Path, number: int, text: str, image: Any) -> EditPrompt:
    """The record's text with its ``image`` path resolved against the .jsonl's folder; must exist."""
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{file}:{number} has a non-string 'image' field; give the source image's path as a string")
    return EditPrompt(text, _source_path(file, number, image))


def _multi_image_prompt(file: Path, number: int, text: str, images: Any, key: str) -> EditPrompt:
    """The record's text with its ``images`` (a non-empty list of paths, relative to the .jsonl) resolved; each must exist."""
    if not isinstance(images, list) or not images or not all(isinstance(i, str) and i.strip() for i in images):
        raise DataError(f"{file}:{number} has a {key!r} field that is not a non-empty list of image paths; "
                        f"write it like \"{key}\": [\"a.png\", \"b.png\"]")
    return EditPrompt(text, [_source_path(file, number, image) for image in images])


def _source_path(file: Path, number: int, image: str) -> Path:
    """A record's source image path resolved against the .jsonl's folder; it must exist and be readable."""
    path = (file.parent / image.strip()).resolve()
    if not path.is_file():
        raise DataError(f"{file}:{number} names source image {path}, which does not exist; fix the 'image' path "
                        "(relative to the .jsonl file)")
    reason = unreadable_image_reason(path)  # read once now: a damaged image must not stop a run halfway
    if reason is not None:
        raise DataError(f"{file}:{number} names source image {path}, which cannot be read ({reason}); replace it "
                        "with a PNG or JPEG file")
    return path


def load_jsonl(file: Path, field: str = "prompt", field_key: str = "data.prompt_field",
               image_field: Optional[str] = "image") -> list[str]:
    """The ``field`` of every JSON record (one per line) of a .jsonl file; errors name ``field_key`` as the fix.

    A record with an ``image_field`` field (a path relative to the file), or its plural (``images``: a list of
    paths, for multi-image editing), becomes an :class:`EditPrompt`;
    one with other fields a :class:`PromptRecord` carrying them as ``metadata`` (GenEval's ``tag``, ...).
    """
    prompts: list[str] = []
    for number, line in _read_lines(file):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{file}:{number} is not valid JSON; write one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(
                f"{file}:{number} has no string field {field!r}; add it or set {field_key} to the field's name"
            )
        text = record[field].strip()
        others = {key: value for key, value in record.items() if key != field}
        several = f"{image_field}s" if image_field else None
        if text and several and several in record:  # several source images (Qwen-Image-Edit-2509/2511)
            if image_field in record:
                raise DataError(f"{file}:{number} has both {image_field!r} and {several!r}; give one of them")
            prompts.append(_multi_image_prompt(file, number, text, record[several], several))
        elif text and image_field and image_field in record:
            prompts.append(_edit_prompt(file, number, text, record[image_field]))
        elif text:
            prompts.append(PromptRecord(text, others) if others else text)
    return prompts


def load_dataset_prompts(name: str, split: str, field: str = "prompt", image_field: Optional[str] = "image") -> list[str]:
    """The ``field`` column of a Hugging Face dataset (name or local path); needs ``datasets``.

    With an ``image_field`` column (an image feature, or paths) every row becomes an :class:`EditPrompt`
    holding the image's encoded bytes or path, decoded only when used.
    """
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"{name} is not a .txt/.jsonl file and the 'datasets' package is missing; "
            "pip install 'treegrpo[datasets]' or point data.prompts at a .txt/.jsonl file"
        ) from None
    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as error:  # noqa: BLE001 - datasets raises many types
        raise DataError(
            f"cannot load dataset {name!r} split {split!r} ({type(error).__name__}); check the name/path and "
            "data.dataset_split, or use a .txt/.jsonl file"
        ) from None
    if field not in table.column_names:
        raise DataError(f"dataset {name!r} has no column {field!r} (columns: {table.column_names}); set data.prompt_field")
    texts = [str(p).strip() for p in table[field]]
    if not image_field or image_field not in table.column_names:
        return [text for text in texts if text]
    if isinstance(table.features[image_field], datasets.Image):
        table = table.cast_column(image_field, datasets.Image(decode=False))  # bytes/paths, not decoded pictures
    local = Path(name).expanduser()
    folder = local if local.is_dir() else None
    return [text if image is None else EditPrompt(text, _dataset_image(name, row, image, image_field, folder))
            for row, (text, image) in enumerate(zip(texts, table[image_field])) if text]


def _dataset_image(name: str, row: int, image: Any, image_field: str, folder: Optional[Path]) -> Any:
    """A dataset row's source image as encoded bytes or an existing path (relative paths: the dataset's folder)."""
    if isinstance(image, dict):
        if image.get("bytes"):
            return bytes(image["bytes"])
        image = image.get("path")
    if isinstance(image, str) and image.strip():
        path = Path(image.strip()).expanduser()
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if path.is_file():
            return path.resolve()
        raise DataError(f"dataset {name!r} row {row}: source image {path} does not exist; fix column {image_field!r} "
                        "or set data.image_field=null to ignore it")
    raise DataError(f"dataset {name!r} row {row} has no usable {image_field!r} (got {type(image).__name__}); "
                    "give an image or a path, or set data.image_field=null")


def load_prompts(source: str, *, field: str = "prompt", split: str = "train", field_key: str = "data.prompt_field",
                 image_field: Optional[str] = "image") -> list[str]:
    """Prompts from a built-in set (``builtin:drawbench``), a .txt / .jsonl file or a HF dataset name or folder;
    never empty. ``field_key`` names the setting that chooses the field (``data.prompt_field``, or
    ``--prompt-field`` for ``treegrpo sample``)."""
    from treegrpo import prompt_sets

    if prompt_sets.is_builtin(source):
        return list(prompt_sets.load(source))
    file = Path(source).expanduser()
    suffix = file.suffix.lower()
    if suffix in (".txt", ".jsonl", ".json"):
        if not file.is_file():
            raise DataError(f"prompt file {file} does not exist; set data.prompts to an existing .txt or .jsonl file")
        prompts = load_txt(file) if suffix == ".txt" else load_jsonl(file, field, field_key, image_field)
    elif file.is_file():
        raise DataError(f"{file} has an unknown extension; use .txt (one prompt per line) or .jsonl")
    else:
        prompts = load_dataset_prompts(source, split, field, image_field)
    if not prompts:
        raise DataError(f"{source} holds no prompts; add at least one non-empty prompt")
    return prompts


@dataclass
class PromptSets:
    """Training pool and held-out prompts."""

    train: list[str]
    eval: list[str]


def split_heldout(prompts: list[str], count: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of ``count`` held-out prompts off ``prompts``; returns (train, held-out)."""
    if count <= 0:
        return prompts, []
    if count >= len(prompts):
        raise DataError(
            f"data.heldout={count} leaves no training prompts out of {len(prompts)}; lower it or set data.eval_prompts"
        )
    order = list(range(len(prompts)))
    random.Random(f"{seed}:heldout").shuffle(order)
    held = set(order[:count])
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]


def builtin_prompts(name: str, cfg: DataConfig, seed: int) -> PromptSets:
    """The demo's shapes captions: a training pool and held-out captions."""
    from treegrpo.demo.shapes import COMPOSITION_GROUPS, PROMPT_GROUPS, heldout_prompts, train_prompts

    groups = {"shapes": PROMPT_GROUPS, "shapes_composition": COMPOSITION_GROUPS}.get(str(name))
    if groups is None:
        raise DataError(f"unknown data.builtin {name!r}; use 'shapes' or 'shapes_composition'")
    return PromptSets(train_prompts(cfg.builtin_size, seed, groups),
                      heldout_prompts(max(cfg.num_eval_prompts, 1), cfg.eval_seed + 1, groups))


def load_prompt_sets(cfg: DataConfig, seed: int) -> PromptSets:
    """Training and evaluation prompts as the ``data`` section describes them.

    ``seed`` draws the built-in training pool; the held-out prompts depend only on ``cfg.eval_seed``.
    """
    if cfg.builtin is not None:
        sets = builtin_prompts(cfg.builtin, cfg, seed)
    else:
        assert cfg.prompts is not None, "validated by treegrpo.config.validate"
        train = load_prompts(cfg.prompts, field=cfg.prompt_field, split=cfg.dataset_split, image_field=cfg.image_field)
        if cfg.eval_prompts is not None:
            sets = PromptSets(train, load_prompts(cfg.eval_prompts, field=cfg.prompt_field, split=cfg.eval_dataset_split,
                                                  image_field=cfg.image_field))
        else:
            kept, held = split_heldout(train, cfg.heldout, cfg.eval_seed)
            sets = PromptSets(kept, held or kept)
    sets.eval = sets.eval[: cfg.num_eval_prompts]
    if len(sets.train) < cfg.prompts_per_iteration:
        raise DataError(
            f"only {len(sets.train)} training prompts but data.prompts_per_iteration={cfg.prompts_per_iteration}; "
            "add prompts or lower data.prompts_per_iteration"
        )
    return sets


class PromptSampler:
    """Seeded draws without replacement within a pass over the pool; state = (epoch, position)."""

    def __init__(self, pool_size: int, seed: int) -> None:
        if pool_size < 1:
            raise DataError("the prompt pool is empty; add prompts to data.prompts")
        self.pool_size = pool_size
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def _permutation(self, epoch: int) -> list[int]:
        """The order of pass ``epoch`` (pure function of seed and epoch)."""
        order = list(range(self.pool_size))
        random.Random(f"{self.seed}:prompts:{epoch}").shuffle(order)
        return order

    def draw(self, count: int) -> list[int]:
        """The next ``count`` pool indices (crossing into the next pass when one runs out)."""
        drawn: list[int] = []
        while len(drawn) < count:
            order = self._permutation(self.epoch)
            take = min(count - len(drawn), self.pool_size - self.position)
            drawn.extend(order[self.position : self.position + take])
            self.position += take
            if self.position == self.pool_size:
                self.epoch, self.position = self.epoch + 1, 0
        return drawn

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position."""
        return {"pool_size": self.pool_size, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position (the pool and seed must match the saved ones)."""
        if state["pool_size"] != self.pool_size or state["seed"] != self.seed:
            raise DataError(
                f"the checkpoint's prompt pool ({state['pool_size']} prompts, seed {state['seed']}) differs from this "
                f"run's ({self.pool_size}, seed {self.seed}); resume with the run's original data and seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
