"""Test-only fault injection: named points in the trainer where a process can be made to die or stall.

Set ``TREEGRPO_FAULTS`` to a comma-separated list of ``POINT:N:ACTION`` entries; when this process
reaches ``POINT`` for the ``N``-th time (counting from 1), it performs ``ACTION``. ``POINT:N:ACTION@R``
acts only in the process of rank ``R`` (``RANK`` of a multi-process launch; 0 otherwise):

* ``kill``  SIGKILL itself (a crash: power loss, OOM killer, preempted VM)
* ``term``  SIGTERM itself (a polite shutdown request)
* ``int``   SIGINT itself (Ctrl-C)
* ``stop``  SIGSTOP itself (a stalled process: alive, holding its sockets, answering nothing; the other
  processes must give up on it after ``train.dist_timeout``)

Points: ``rollout`` (after the trees are grown), ``reward`` (after scoring), ``update`` (after
each optimizer step), ``metrics`` (before a metrics line is written), ``checkpoint_write``
(before every file a checkpoint writes, the rename and the pruning). Unset, every call is a
dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

ENV = "TREEGRPO_FAULTS"
ACTIONS: dict[str, int] = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT, "stop": signal.SIGSTOP}

_counts: dict[str, int] = {}


def parse(spec: str, rank: int = 0) -> dict[str, tuple[int, int]]:
    """``"rollout:2:kill,update:1:term@1"`` -> ``{point: (occurrence, signal)}`` for the process of ``rank``."""
    plan: dict[str, tuple[int, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        entry, at, only = entry.partition("@")
        if at and int(only) != rank:
            continue
        point, count, action = entry.split(":")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} in {entry!r}; use kill, term, int or stop")
        plan[point] = (int(count), ACTIONS[action])
    return plan


def fault_point(point: str) -> None:
    """Count one visit of ``point``; signal this process if ``TREEGRPO_FAULTS`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _counts[point] = _counts.get(point, 0) + 1
    wanted = parse(spec, int(os.environ.get("RANK", "0"))).get(point)
    if wanted is not None and wanted[0] == _counts[point]:
        os.kill(os.getpid(), wanted[1])


def reset() -> None:
    """Forget the visit counts (a fresh process, or a forked child, starts from zero)."""
    _counts.clear()
