"""One check for every numeric option: policies, task options and settings alike."""

from __future__ import annotations

import math
from typing import overload

__all__ = ["checked_number"]


@overload
def checked_number(
    value: object, *, what: str, minimum: float = 0.0, strict: bool = True, integer: bool
) -> int: ...


@overload
def checked_number(
    value: object, *, what: str, minimum: float = 0.0, strict: bool = True
) -> float: ...


def checked_number(
    value: object, *, what: str, minimum: float = 0.0, strict: bool = True, integer: bool = False
) -> float | int:
    """``value``, checked: a number (an ``int`` with ``integer``; never a ``bool``), finite,
    above ``minimum`` (at least ``minimum`` when not ``strict``).

    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one out of
    range, each naming ``what``::

        >>> checked_number(2.5, what="CircuitBreaker: window")
        2.5
        >>> checked_number(0, what="deadline")
        Traceback (most recent call last):
        ValueError: deadline must be > 0, got 0
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__}")
    number: float | int = value
    if not math.isfinite(number) or (number <= minimum if strict else number < minimum):
        raise ValueError(f"{what} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return number
