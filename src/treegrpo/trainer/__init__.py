"""The trainer: the RL loop (:mod:`~treegrpo.trainer.loop`) and what it stands on.

- ``loop``: :class:`Trainer` (one iteration: plan -> rollout -> rewards -> advantages -> update)
- ``launch``: :func:`train`, a new or resumed run in its folder
- ``distributed``: gathering across processes, shared flags, the accelerate learner
- ``evaluation``: engine sampling, held-out evaluation, image grids, tree pictures
- ``metrics``: metrics.jsonl, eval.jsonl, TensorBoard
- ``run_dir``: the run folder and atomic writes
- ``setup``: rewards, preflight checks of user input, the checkpoint to resume
- ``signals``: a clean stop on SIGTERM / SIGINT
"""

from treegrpo.trainer.launch import train
from treegrpo.trainer.loop import Trainer
from treegrpo.trainer.run_dir import RunDirError
from treegrpo.trainer.signals import TrainingInterrupted

__all__ = ["RunDirError", "Trainer", "TrainingInterrupted", "train"]
