"""The one way a named choice is registered: model types, attention scores, corpus formats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


def register_in(table: dict[str, Any], name: str, what: str) -> Callable[[T], T]:
    """Class decorator that adds the class to `table` under `name`; a name registered twice (to another class) is
    a ValueError naming both."""

    def register(cls: T) -> T:
        if name in table and table[name] is not cls:
            raise ValueError(f"{what} {name!r} is registered twice ({table[name].__qualname__} and "
                             f"{cls.__qualname__})")
        table[name] = cls
        return cls

    return register
