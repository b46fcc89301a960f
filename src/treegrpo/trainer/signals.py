"""Stopping a run cleanly: the first SIGTERM / SIGINT ends it at the next iteration boundary."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT stopped the run at an iteration boundary, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path], resume: str = "") -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint {checkpoint} saved" if checkpoint is not None else "no iteration finished, nothing saved"
        hint = f"; continue with `{resume}`" if resume and checkpoint is not None else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {saved}{hint}")


class StopSignals:
    """The first SIGTERM / SIGINT asks the loop to stop at the next iteration boundary; a second quits now."""

    SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True) -> None:
        self.received: Optional[int] = None
        self.announce = announce
        """Print what happens (the main process does; the others of a multi-process run stay quiet)."""

    def _handle(self, signum: int, frame: Any) -> None:
        """Remember the first signal; re-deliver a second one with the default action."""
        name = signal.Signals(signum).name
        if self.received is not None:
            if self.announce:
                sys.stderr.write(f"received {name} again: quitting now without saving\n")
                sys.stderr.flush()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        if self.announce:
            logger.warning("received %s: finishing this iteration, then saving a checkpoint (send it again to quit "
                           "without saving)", name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Inside, SIGTERM / SIGINT are caught (main thread only; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
