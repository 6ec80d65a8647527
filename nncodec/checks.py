"""Type checks of user options: a number or an integer that is not a bool (``True`` would pass as 1)."""

from __future__ import annotations

from typing import Any

__all__ = ["is_number", "is_int"]


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
