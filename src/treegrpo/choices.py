"""Config choices as string enums: a typo is refused when the config is read, with the valid values."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from treegrpo.errors import ConfigError, did_you_mean

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A string-valued choice: equal to its value, printed as it, parsed with a one-line error."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls: type[C], value: object, key: str) -> C:
        """``value`` as a member of this choice, or a ConfigError naming ``key`` and the valid values."""
        if isinstance(value, cls):
            return value
        values = [member.value for member in cls]
        if isinstance(value, str) and value in values:
            return cls(value)
        hint = did_you_mean(str(value), values)
        raise ConfigError(f"{key} is {value!r}; use one of {', '.join(values)}{hint}")
