"""What is left of a task's deadline, and the timeout an outbound call may use of it.

A task with a ``deadline`` gives up that many seconds after its first attempt; an HTTP
call made by its body should not outlive it. These pure functions say how long is left,
how a call's timeout shrinks to fit, and what the opt-in budget header says::

    >>> remaining_budget(deadline=10.0, started=100.0, now=108.0)
    2.0
    >>> shrink_timeout((3.05, 30.0), 2.0)
    (2.0, 2.0)
    >>> budget_header_value(1.23456)
    '1.234'
"""

from __future__ import annotations

from typing import Final, TypeAlias

__all__ = [
    "MIN_CALL_BUDGET",
    "CallTimeout",
    "budget_header_value",
    "cap_seconds",
    "remaining_budget",
    "shrink_timeout",
]

#: A call with less than this many seconds of its task's deadline left is not started:
#: nothing useful crosses a network in less, and the task would give up meanwhile anyway.
MIN_CALL_BUDGET: Final = 0.1

CallTimeout: TypeAlias = float | tuple[float | None, float | None] | None
"""A call's timeout: seconds, ``(connect, read)`` seconds (``None`` in either: no limit),
or ``None`` (no limit at all)."""


def remaining_budget(deadline: float | None, started: float | None, now: float) -> float | None:
    """Seconds left of ``deadline`` at ``now`` for a task first attempted at ``started``,
    never below 0; ``None`` when there is no deadline (or no first attempt yet)::

        >>> remaining_budget(10.0, 100.0, 115.0), remaining_budget(None, 100.0, 115.0)
        (0.0, None)
    """
    if deadline is None or started is None:
        return None
    return max(deadline - (now - started), 0.0)


def cap_seconds(seconds: float | None, left: float) -> float:
    """One timeout part cut to ``left``; no limit (``None``) becomes ``left``."""
    return left if seconds is None else min(float(seconds), left)


def shrink_timeout(timeout: CallTimeout, left: float) -> float | tuple[float, float]:
    """``timeout`` with each of its parts (connect, read) at most ``left`` seconds.

    A part without a limit (``None``) becomes ``left``; a single number stays a single
    number, a pair stays a pair::

        >>> shrink_timeout(None, 2.0), shrink_timeout(5, 2.0), shrink_timeout((1.0, None), 2.0)
        (2.0, 2.0, (1.0, 2.0))
    """
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (cap_seconds(connect, left), cap_seconds(read, left))
    return cap_seconds(timeout, left)


def budget_header_value(left: float) -> str:
    """The budget header's value: seconds left, a decimal with millisecond precision
    (rounded down, so it never promises more than is left)::

        >>> budget_header_value(2.0), budget_header_value(0.0004)
        ('2.000', '0.000')
    """
    millis = int(max(left, 0.0) * 1000)
    return f"{millis // 1000}.{millis % 1000:03d}"
