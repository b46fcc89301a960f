"""Bad user input: the one error type the command line turns into a one-line message and exit code 2.

Anything else that escapes is a bug and shows its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """Bad user input (a config value, a path, a file's contents); the message names the fix."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, else ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
