"""The run folder: what a run writes there, refusing another run's folder, atomic text writes.

``RUN`` = ``output_dir``::

    RUN/config.yaml                 the resolved config
    RUN/metrics.jsonl               one JSON object per iteration (see treegrpo.trainer.metrics)
    RUN/eval.jsonl                  one JSON object per evaluation: step, eval/<name>, eval/score
    RUN/tensorboard/                the same scalars, sample grids, tree pictures
    RUN/samples/step-NNNNNN.png     evaluation grids (step 0 = before training), and -captioned.png (prompt, reward)
    RUN/trees/step-NNNNNN.png       one tree of the latest rollout: the decoded image at every node
    RUN/checkpoints/step-NNNNNN/    see treegrpo.runtime.checkpoint (exact resume)
    RUN/final/                      the trained weights via backbone.save_trained (EMA when on) and README.md (model card)
    RUN/wandb/, RUN/swanlog/        other trackers' local files (train.log_with)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from treegrpo.errors import ConfigError

RUN_FILES: tuple[str, ...] = (
    "config.yaml", "metrics.jsonl", "eval.jsonl", "tensorboard", "samples", "trees", "checkpoints", "final", "debug",
    "wandb", "swanlog", "report.png", "report.html",
)
"""What a run writes into its folder (and what ``--overwrite`` removes)."""


class RunDirError(ConfigError):
    """The output folder cannot be used as asked; the message names the fix."""


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds files of a run."""
    return folder.is_dir() and any((folder / name).exists() for name in RUN_FILES)


def trained_nothing(folder: Path) -> bool:
    """A run folder where no iteration finished (set-up or the first evaluation failed): no metrics line, no
    checkpoint, no export. Starting it again loses nothing."""
    metrics = folder / "metrics.jsonl"
    if metrics.is_file() and metrics.read_text(encoding="utf-8").strip():
        return False
    for name in ("checkpoints", "final"):
        if (folder / name).is_dir() and any((folder / name).iterdir()):
            return False
    return True


def check_output_folder(folder: Path) -> None:
    """Refuse a file, or a non-empty folder that holds no run (a model folder, a home directory): never write there."""
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--output-dir {folder} is a file; choose a new or empty folder")
    if folder.is_dir() and not holds_run(folder):
        entries = sorted(p.name for p in folder.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise RunDirError(
                f"--output-dir {folder} is not empty ({shown}) and holds no treegrpo run; choose a new or empty folder"
            )
    check_writable(folder)


def check_writable(folder: Path) -> None:
    """Write and remove a small probe where the run folder will be (its nearest existing parent), so a
    read-only, full or foreign folder is refused before a model loads rather than at the first save."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".treegrpo-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RunDirError(f"cannot write to {existing} ({reason}) for --output-dir {folder}; "
                          "free space there, fix its permissions, or choose another --output-dir") from None


def resume_command(run_dir: Path, processes: int = 1) -> str:
    """The command that continues the run in ``run_dir`` (its config.yaml holds every setting)."""
    launcher = "treegrpo" if processes == 1 else f"accelerate launch --multi_gpu --num_processes {processes} -m treegrpo"
    return f"{launcher} train --resume {run_dir.resolve()}"


def prepare_run_dir(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder; refuse another run's files unless resuming or overwriting."""
    if holds_run(folder) and not resume:
        if not overwrite:
            raise RunDirError(
                f"{folder} already holds a run; pass --resume {folder} to continue it, --overwrite to replace it, "
                "or choose another --output-dir"
            )
        for name in RUN_FILES:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def write_atomic(file: Path, text: str) -> None:
    """Replace ``file`` with ``text`` so that a crash leaves either the old or the new content."""
    temporary = file.with_name(f".{file.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, file)
