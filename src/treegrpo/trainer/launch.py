"""Start or resume a run in its folder: the checks on the folder and the checkpoint, then the loop.

:func:`train` decides what a run folder holds (a new run, one to resume, one already finished, or
something that is not a run), runs the preflight checks of user input, and hands over to
:class:`~treegrpo.trainer.loop.Trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from treegrpo.config import TrainerConfig, with_absolute_paths
from treegrpo.errors import ConfigError
from treegrpo.runtime import checkpoint as ckpt
from treegrpo.trainer.distributed import process_group_timeout
from treegrpo.trainer.loop import Trainer
from treegrpo.trainer.run_dir import (
    RunDirError, check_output_folder, holds_run, prepare_run_dir, resume_command, trained_nothing,
)
from treegrpo.trainer.setup import check_processes, find_resume_checkpoint, preflight

logger = logging.getLogger(__name__)


def train(cfg: TrainerConfig, *, resume: Optional[str] = None, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train as ``cfg`` says; ``resume`` is a run folder or ``"auto"`` (newest complete checkpoint, else a new run).

    Paths in the config are made absolute first (RUN/config.yaml then works from any folder). A
    resumed run that already finished ``train.iterations`` logs one line and returns no records.
    """
    from accelerate import PartialState

    cfg = with_absolute_paths(cfg)
    run_dir = Path(cfg.output_dir if resume in (None, "auto") else str(resume)).expanduser().resolve()
    check_output_folder(run_dir)
    checkpoint = find_resume_checkpoint(run_dir, explicit=resume not in (None, "auto")) if resume else None
    if holds_run(run_dir) and checkpoint is None and not overwrite and trained_nothing(run_dir):
        logger.warning("%s holds a run that finished no iteration (its set-up or first evaluation failed): "
                       "starting it again", run_dir)
        overwrite = True
    if holds_run(run_dir) and checkpoint is None and not overwrite:
        if resume == "auto":
            raise RunDirError(f"{run_dir} holds a run but no complete checkpoint to resume; pass --overwrite to start it "
                              "again, or choose another --output-dir")
        prepare_run_dir(run_dir, resume=False, overwrite=False)  # raises the one-line RunDirError
    if checkpoint is not None:
        done = int(ckpt.read_state(checkpoint)["iteration"])
        exported = (run_dir / "final").is_dir() and any((run_dir / "final").iterdir())
        if done >= cfg.train.iterations and exported:
            logger.info("%s already finished %d iterations; raise train.iterations to continue, e.g. `%s train.iterations=%d`",
                        run_dir, done, resume_command(run_dir), 2 * done)
            return []
    # multi-process CPU runs use gloo; the group is created here, so its timeout is given here
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=process_group_timeout(cfg.train.dist_timeout))
    try:
        check_processes(cfg, state.num_processes)
    except ConfigError as error:  # a resume on another number of processes: say so
        saved = int(ckpt.read_state(checkpoint)["world_size"]) if checkpoint is not None else state.num_processes
        if saved == state.num_processes:
            raise
        raise ConfigError(f"{checkpoint} (saved by {saved} processes) cannot resume on {state.num_processes}: "
                          f"{error}") from None
    rewards, judges = preflight(cfg, state.device)
    if state.is_main_process:
        if resume == "auto" and checkpoint is None:
            logger.info("no checkpoint in %s: starting a new run there", run_dir)
        prepare_run_dir(run_dir, resume=checkpoint is not None, overwrite=overwrite)
    state.wait_for_everyone()
    cfg = replace(cfg, output_dir=str(run_dir))
    trainer = Trainer(cfg, run_dir=run_dir, resume_from=checkpoint, rewards=rewards, judges=judges)
    return trainer.train()

