"""The one error type for bad user input: the command line prints its one-line message and exits 2.

Anything else that escapes is a bug and shows its traceback.
"""


class ConfigError(ValueError):
    """Bad user input (a config value, a path, a file's contents); the message names the fix."""
