"""Bad input through the real CLI (``python -m treegrpo train`` in subprocesses, run concurrently):
one line on stderr naming the fix, exit code 2, and the output folder byte-identical afterwards.
Property tests: numeric config values load or raise ConfigError, never anything else, and the
tree-shape check accepts exactly the shapes ``treegrpo.math.plans`` can build. Plus a source grep:
no ``import pickle`` and no ``torch.load(`` without ``weights_only=True``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_trainer import tiny_values
from treegrpo.config import ConfigError, resolve_config, valid_keys
from treegrpo.engine.methods import TreeConfig, plan_for_iteration

ROOT = Path(__file__).resolve().parents[1]

# name -> (overrides, extra files to create: path suffix -> bytes, expected text in the error)
CASES: dict[str, tuple[list[str], str]] = {
    "typo-key": (["tree.kk=3"], "did you mean 'tree.k'"),
    "wrong-type": (["train.lr=fast"], "bad value for 'train.lr'"),
    "nan-value": (["train.lr=.nan"], "finite"),
    "section-as-value": (["train=3"], "is a section"),
    "missing-prompts": (["data.prompts={tmp}/nope.txt"], "does not exist"),
    "empty-prompts": (["data.prompts={tmp}/empty.txt"], "holds no prompts"),
    "latin1-prompts": (["data.prompts={tmp}/latin.txt"], "not UTF-8"),
    "too-few-prompts": (["data.prompts_per_iteration=9"], "lower data.prompts_per_iteration"),
    "not-a-pipeline": (["model.path={tmp}/notapipeline"], "model_index.json"),
    "missing-reward-weights": (["reward={aesthetic: {head: {tmp}/none.pth, local_files_only: true}}"], "does not exist"),
    "k-below-1": (["tree.k=0"], "tree.k must be >= 1"),
    "window-past-last-step": (["tree.window=4"], "tree.window <= 3"),
    "split-outside-schedule": (["tree.schedule=split", "tree.split_steps=[0,7]"], "outside 0..3"),
    "another-run": ([], "already holds a run"),
    "nul-prompts": (["data.prompts={tmp}/nul.txt"], "nul.txt:2 holds a NUL byte"),
    "long-line-prompts": (["data.prompts={tmp}/long.txt"], "long.txt:1 is 100000 characters long"),
    "truncated-image": (["data.prompts={tmp}/truncated.jsonl"], "truncated.jsonl:1 names source image"),
    "zero-byte-image": (["data.prompts={tmp}/empty_image.jsonl"], "cannot be read (UnidentifiedImageError"),
    "text-as-image": (["data.prompts={tmp}/text_image.jsonl"], "cannot be read (UnidentifiedImageError"),
    "bomb-image": (["data.prompts={tmp}/bomb.jsonl"], "decompression-bomb limit"),
}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims ``width x height`` pixels, with no pixel data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def write_image_files(folder: Path) -> None:
    """Editing prompt files whose one source image is truncated, empty, text, or a bomb."""
    from PIL import Image

    buffer = folder / "good.png"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(buffer)
    images = {"truncated": buffer.read_bytes()[:60], "empty_image": b"", "text_image": b"a prompt, not a picture\n",
              "bomb": png_claiming(20_000, 20_000)}
    for name, data in images.items():
        (folder / f"{name}.png").write_bytes(data)
        (folder / f"{name}.jsonl").write_text(json.dumps({"prompt": "make it blue", "image": f"{name}.png"}) + "\n")


def _prepare(tmp_path: Path) -> Path:
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"a red square\nan \x00odd one\n")
    (tmp_path / "long.txt").write_text("x" * 100_000 + "\n")
    write_image_files(tmp_path)
    (tmp_path / "notapipeline").mkdir()
    (tmp_path / "notapipeline" / "weights.bin").write_bytes(b"\0" * 16)
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_values(tmp_path, iterations=1, eval_at_start=False)))
    return config


def _folder(out: Path) -> Optional[dict[str, bytes]]:
    """The files of ``out`` with their bytes (None when it does not exist)."""
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None


def _launch(config: Path, tmp_path: Path, name: str, overrides: list[str]) -> tuple[subprocess.Popen, Path, Any]:
    out = tmp_path / f"out-{name}"
    if name == "another-run":  # another run's folder; every other case writes into a new folder (or must not)
        out.mkdir()
        (out / "metrics.jsonl").write_bytes(b'{"step": 1}\n' + name.encode())
    items = [item.replace("{tmp}", str(tmp_path)) for item in overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, "-m", "treegrpo", "train", str(config), *items, "--output-dir", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, out, _folder(out)


SUBPROCESS_CASES = ("typo-key", "missing-prompts", "not-a-pipeline", "missing-reward-weights", "another-run", "bomb-image")
"""One case per layer through a real ``python -m treegrpo`` process (exit status, stderr, nothing written);
the rest through ``cli.main`` in this process, the same code path without a torch import per case."""


def _one_line_exit_2(name: str, code: int, stderr: str, out: Path, before: Any) -> bool:
    """Exit status 2, one stderr line holding the case's expected text, and the output folder untouched."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and CASES[name][1] in lines[0] and _folder(out) == before


def test_bad_inputs_through_the_cli_exit_2_with_one_line_and_touch_nothing(tmp_path: Path) -> None:
    import contextlib
    import io

    from treegrpo.cli import main

    config = _prepare(tmp_path)
    failures = []
    running = {name: _launch(config, tmp_path, name, CASES[name][0]) for name in SUBPROCESS_CASES}
    for name in CASES:
        if name in SUBPROCESS_CASES:
            continue
        out = tmp_path / f"out-{name}"
        before = _folder(out)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", str(config), *[item.replace("{tmp}", str(tmp_path)) for item in CASES[name][0]],
                         "--output-dir", str(out)])
        if not _one_line_exit_2(name, code, err.getvalue(), out, before):
            failures.append(f"{name} (in process): rc={code} stderr={err.getvalue()[-600:]!r}")
    for name, (process, out, before) in running.items():
        _, err_text = process.communicate(timeout=180)
        if not _one_line_exit_2(name, process.returncode, err_text, out, before):
            failures.append(f"{name}: rc={process.returncode} stderr={err_text[-600:]!r}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- properties

BASE: dict[str, Any] = {"data": {"prompts": "prompts.txt"}, "reward": "jpeg_compressibility"}
NUMERIC_KEYS = sorted(key for key, hint in valid_keys().items() if hint in (int, float) or hint in (typing.Optional[int], typing.Optional[float]))


def _nested(key: str, value: Any) -> dict[str, Any]:
    values: dict[str, Any] = json.loads(json.dumps(BASE))
    *sections, leaf = key.split(".")
    node = values
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    return values


NUMBERS = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**63, 0.5, "3", "x", None, True]))


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(NUMERIC_KEYS), value=NUMBERS)
def test_numeric_values_load_or_raise_config_error(key: str, value: Any) -> None:
    try:
        resolve_config(_nested(key, value))
    except ConfigError as error:
        assert "\n" not in str(error)


def _buildable(tree: TreeConfig, steps: int) -> bool:
    """Whether the schedule builds this shape for several iterations."""
    try:
        for epoch in range(4):
            plan_for_iteration(tree, steps, epoch, 0)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(schedule=st.sampled_from(["tree", "mix", "flat", "split"]), k=st.integers(-2, 5), window=st.integers(-1, 10),
       placement=st.sampled_from(["fixed", "shifting", "geometric"]), start=st.integers(-2, 10),
       ratio=st.sampled_from([0.0, 0.5, 0.99, 1.0]), steps=st.integers(1, 10),
       splits=st.lists(st.integers(-2, 11), max_size=4), fraction=st.sampled_from([0.0, 0.3, 1.0, 1.5]))
def test_tree_validation_accepts_exactly_the_buildable_shapes(schedule: str, k: int, window: int, placement: str,
                                                              start: int, ratio: float, steps: int, splits: list[int],
                                                              fraction: float) -> None:
    tree = {"schedule": schedule, "k": k, "window": window, "window_placement": placement, "window_start": start,
            "geometric_ratio": ratio, "split_steps": splits, "train_fraction": fraction}
    values = {**BASE, "tree": tree, "sampling": {"steps": steps}}
    try:
        resolve_config(values)
        accepted = True
    except ConfigError:
        accepted = False
    assert accepted == _buildable(TreeConfig(**tree), steps), tree


# ----------------------------------------------------------------------------- security


def _call_text(text: str, open_paren: int) -> str:
    """The argument text of the call whose ``(`` is at ``open_paren`` (balanced parentheses)."""
    depth = 0
    for index in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_paren : index + 1]
    return text[open_paren:]


def test_no_pickle_loading_in_the_source_tree() -> None:
    offenders = []
    for file in sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py")):
        text = file.read_text(encoding="utf-8")
        if re.search(r"^\s*(import pickle|from pickle import|import cPickle|import dill)", text, re.MULTILINE):
            offenders.append(f"{file}: imports pickle")
        for match in re.finditer(r"torch\.load\(", text):
            if "weights_only=True" not in _call_text(text, match.end() - 1):
                offenders.append(f"{file}: torch.load without weights_only=True")
        if re.search(r"\byaml\.load\(|\bnp\.load\([^)]*allow_pickle=True|\bpd\.read_pickle\(", text):
            offenders.append(f"{file}: pickle-capable loader")
    assert not offenders, offenders


YAML_TRAPS = ["[1, 2", "{a: [}", "!!python/object/apply:os.system ['echo pwned']", "&a [*a, *a]", "1e999", "-.inf",
              "0x10", "~", "null", "'quoted", "\x00", "\u202e3", "ｔｒｕｅ", "{}", "[]", "a: b: c", "- x", "%YAML 1.1",
              "\ud7ff", "=", "==", "3=4", "\t", " ", "", "１", "nan", "1_000", "0o17", ".5", "yes", "on", "2026-12-04"]
SECTIONS = sorted({key.split(".")[0] for key in valid_keys()})


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(st.sampled_from(sorted(valid_keys())), st.sampled_from(SECTIONS), st.text(max_size=30),
                     st.builds(lambda s, t: f"{s}.{t}", st.sampled_from(SECTIONS), st.text(max_size=12))),
       value=st.one_of(st.sampled_from(YAML_TRAPS), st.text(max_size=40)))
def test_any_override_through_the_cli_is_exit_0_or_2_never_a_traceback(key: str, value: str) -> None:
    """Random keys (known, sections, unicode) and values (YAML traps, unicode, control characters) at the
    command line: the config layer accepts (0) or gives one line (2); nothing else escapes, no tag runs code."""
    import contextlib
    import io

    import treegrpo.trainer
    from treegrpo.cli import main

    seen: list[Any] = []
    original = treegrpo.trainer.train
    treegrpo.trainer.train = lambda cfg, **kwargs: seen.append(cfg)  # type: ignore[assignment]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(["train", "model.path=builtin:shapes", "data.builtin=shapes", "reward=shapes",
                             f"{key}={value}", "--output-dir", "/nonexistent-treegrpo-fuzz/run"])
            except SystemExit as stop:  # argparse's own one-line error (a key that looks like an option)
                code = int(stop.code or 0)
    finally:
        treegrpo.trainer.train = original
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert (code == 0 and len(seen) == 1) or (code == 2 and len(lines) == 1 and not seen), (code, lines)
    assert code == 0 or "cannot parse overrides" not in lines[0]  # the one bad override is named, not the list
    assert not Path("/nonexistent-treegrpo-fuzz").exists()
