"""Name -> factory lookup with errors that name the bad value and the valid choices."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def choose(kind: str, name: str, options: Mapping[str, T]) -> T:
    """Return ``options[name]`` or raise a ValueError listing the valid names."""
    try:
        return options[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(options))
        raise ValueError(f"Unknown {kind} {name!r}. Valid choices: {valid}.") from None


def require_positive(name: str, value: object, kind: Callable = int) -> None:
    """Raise a ValueError unless ``value`` is a positive number of the given kind."""
    types = int if kind is int else (int, float)
    is_number = isinstance(value, types) and not isinstance(value, bool)
    if not is_number or not value > 0:  # `not >` also catches NaN
        wanted = "a positive integer" if kind is int else "a positive number"
        raise ValueError(f"{name} must be {wanted}, got {value!r}.")
