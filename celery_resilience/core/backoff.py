"""Countdowns before a retry, from a tenacity wait strategy, Retry-After and a deadline.

A task's ``backoff`` is any tenacity wait strategy (``tenacity.wait_exponential()``,
``wait_fixed(2) + wait_random(0, 1)``, ...) or a callable taking a
``tenacity.RetryCallState``; the default is full-jitter exponential, 1 s base, 60 s cap.
The worker never sleeps it out: the countdown is handed to ``Task.retry``.

:func:`retry_countdown` puts the pieces together, in this order:

1. ``b``, the strategy's value for this failure (never below :data:`MIN_COUNTDOWN`);
2. ``Retry-After`` is a floor, not a time: a hundred tasks told "Retry-After: 5" must
   not all come back at second 5. If ``b`` already reaches the floor, the countdown is
   ``b``; otherwise it is the floor plus a jitter drawn uniformly from
   ``[0, max(b, 10 % of the floor)]``: the backoff's own spread, and at least a few
   percent of the wait the upstream asked for;
3. the deadline: the retry must start before it. A floor that does not fit gives up
   (``Countdown(None, "deadline")``); otherwise the countdown is capped a margin before
   the deadline (``min(1 s, 10 %)`` of what remains), never below the floor.

Randomness comes from ``rng`` (default: the ``random`` module, which tenacity's own
strategies use too), so seeding ``random`` makes a countdown reproducible.
"""

from __future__ import annotations

import inspect
import math
import numbers
import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from tenacity.wait import wait_base

__all__ = [
    "DEFAULT_BACKOFF",
    "MIN_COUNTDOWN",
    "RETRY_AFTER_JITTER",
    "Countdown",
    "WaitStrategy",
    "backoff_seconds",
    "check_backoff",
    "retry_countdown",
    "split_wait",
]

WaitStrategy = wait_base | Callable[[tenacity.RetryCallState], float]
"""A tenacity wait strategy, or any callable from a ``RetryCallState`` to seconds."""

#: Full jitter: a uniform draw in ``[0, min(60, 2 ** (attempt - 1))]`` seconds.
DEFAULT_BACKOFF: wait_base = tenacity.wait_random_exponential(multiplier=1, max=60)

#: The shortest countdown: never 0, so a failing task cannot spin on the broker.
MIN_COUNTDOWN: float = 0.05

#: The least jitter above a Retry-After floor, as a share of the floor.
RETRY_AFTER_JITTER: float = 0.1

_DEADLINE_MARGIN = 1.0
_DEADLINE_MARGIN_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Countdown:
    """When to retry: ``seconds`` from now, or ``None`` to give up; and why, in a word.

    ``reason`` is ``"backoff"``, ``"retry-after"`` (the upstream's floor decided) or
    ``"deadline"`` (capped by the deadline, or nothing fits before it)::

        Countdown(seconds=5.3, reason="retry-after")
        Countdown(seconds=None, reason="deadline")
    """

    seconds: float | None
    reason: str


def check_backoff(wait: object, *, option: str = "backoff") -> None:
    """Raise ``TypeError`` unless ``wait`` can serve as a wait strategy.

    Accepted: a tenacity ``wait_base`` instance, or a callable that takes one positional
    argument (the ``RetryCallState``). ``option`` names the setting in the message::

        check_backoff(tenacity.wait_fixed(2))  # fine
        check_backoff(5)                       # TypeError
    """
    if isinstance(wait, wait_base):
        return
    hint = (
        f"{option} must be a tenacity wait strategy such as "
        "tenacity.wait_exponential(multiplier=1, max=60), "
        "or a callable taking a tenacity.RetryCallState"
    )
    if isinstance(wait, type):
        raise TypeError(f"{hint}; got the class {wait.__qualname__}, not an instance of it")
    if not callable(wait):
        raise TypeError(f"{hint}; got {type(wait).__name__}")
    try:
        signature = inspect.signature(wait)
    except (TypeError, ValueError):  # some builtins have none: give them the benefit
        return
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(f"{hint}; got {_describe(wait)}{signature}") from None


def backoff_seconds(wait: WaitStrategy, attempt: int, *, exc: BaseException | None = None) -> float:
    """The strategy's wait after failure number ``attempt`` (1-based), in seconds.

    The strategy is called as tenacity calls it, with a ``RetryCallState`` whose
    ``attempt_number`` is ``attempt`` (and whose outcome is ``exc``, for strategies
    such as ``wait_exception`` that look at it). The result is at least
    :data:`MIN_COUNTDOWN`; a negative, NaN, infinite or non-number result is a broken
    strategy and raises ``ValueError`` naming it::

        >>> backoff_seconds(tenacity.wait_exponential(multiplier=1, max=30), 3)
        4.0
    """
    check_backoff(wait)
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int, not {type(attempt).__name__}")
    if attempt < 1:
        raise ValueError(f"attempt counts failures from 1, got {attempt}")
    state = tenacity.RetryCallState(
        retry_object=tenacity.Retrying(wait=wait), fn=None, args=(), kwargs={}
    )
    state.attempt_number = attempt
    if exc is not None:
        state.set_exception((type(exc), exc, exc.__traceback__))
    value: object = wait(state)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # a strategy's junk result is a bad value, as NaN is: ValueError for both
        raise ValueError(  # noqa: TRY004
            f"backoff {_describe(wait)} returned {type(value).__name__} {value!r:.50}, "
            "not a number of seconds"
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"backoff {_describe(wait)} returned {seconds!r} for attempt {attempt}; "
            "a wait is a finite number of seconds >= 0"
        )
    return max(seconds, MIN_COUNTDOWN)


def retry_countdown(
    wait: WaitStrategy,
    attempt: int,
    *,
    retry_after: float | None = None,
    remaining: float | None = None,
    rng: random.Random | None = None,
    exc: BaseException | None = None,
) -> Countdown:
    """The countdown before retrying after failure number ``attempt``.

    ``retry_after`` (seconds, from the upstream or a ``TransientError``) is a floor with
    jitter above it; ``remaining`` is what is left of the task's deadline (``None``: no
    deadline). See the module docstring for the rules::

        >>> retry_countdown(tenacity.wait_fixed(2), 1)
        Countdown(seconds=2.0, reason='backoff')
        >>> retry_countdown(tenacity.wait_fixed(2), 1, retry_after=30, remaining=10)
        Countdown(seconds=None, reason='deadline')
    """
    backoff = backoff_seconds(wait, attempt, exc=exc)
    uniform = random.uniform if rng is None else rng.uniform
    floor = MIN_COUNTDOWN
    seconds, reason = backoff, "backoff"
    if retry_after is not None:
        floor = max(_non_negative("retry_after", retry_after), MIN_COUNTDOWN)
        if backoff < floor:
            spread = max(backoff, RETRY_AFTER_JITTER * floor)
            seconds, reason = floor + uniform(0.0, spread), "retry-after"
    if remaining is None:
        return Countdown(seconds, reason)
    if math.isnan(remaining):
        raise ValueError("remaining must be a number of seconds, got nan")
    if floor >= remaining:
        return Countdown(None, "deadline")
    margin = min(_DEADLINE_MARGIN, _DEADLINE_MARGIN_SHARE * remaining)
    latest = max(remaining - margin, floor)
    if seconds > latest:
        return Countdown(latest, "deadline")
    return Countdown(seconds, reason)


def split_wait(total: float, cap: float | None) -> float:
    """The first leg of a wait that may be longer than one countdown can safely be.

    With the Redis broker a countdown longer than ``visibility_timeout`` is redelivered;
    ``cap`` is the longest single countdown allowed (the visibility timeout less a
    margin; ``None``: no cap). The rest of ``total`` is waited by deferring again::

        >>> split_wait(5000.0, 3000.0), split_wait(20.0, 3000.0)
        (3000.0, 20.0)
    """
    total = _non_negative("total", total)
    if cap is None:
        return total
    if not cap > 0:
        raise ValueError(f"cap must be > 0 seconds, got {cap!r}")
    return min(total, float(cap))


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _describe(wait: object) -> str:
    name = getattr(wait, "__qualname__", None)
    return name if isinstance(name, str) else type(wait).__qualname__
