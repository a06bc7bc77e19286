"""The one way a named choice is registered: model types, attention scores, corpus formats."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any, TypeVar, get_type_hints

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


def option_keys(entries: Iterable[type], what: str) -> dict[str, Any]:
    """name -> type of every field some registered options class declares (the union a config schema holds); a
    field declared twice with different types is a TypeError naming `what`."""
    keys: dict[str, Any] = {}
    for options in entries:
        hints = get_type_hints(options)
        for option in fields(options):
            if keys.setdefault(option.name, hints[option.name]) != hints[option.name]:
                raise TypeError(f"{what}.{option.name} is declared twice with different types")
    return keys
