"""The deadline budget of the running attempt, for the task's HTTP session.

The attempt flow binds a :class:`Budget` around the task body when the task has a
``deadline``; :class:`~celery_resilience.integration.http.ResilientSession` reads it to
shrink each call's timeout to what is left, to refuse a call that cannot finish in time
(:class:`~celery_resilience.core.errors.DeadlineSpent`) and to send the opt-in budget
header. Like the attempt's trace context it lives in a context variable: a thread started
by the body sees it only when run in ``contextvars.copy_context()``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from celery_resilience.core.budget import remaining_budget

__all__ = ["Budget", "bind_budget", "current_budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    """What an attempt's calls need to know of its deadline.

    ``started`` is the first attempt's time and ``clock`` the clock it was read from (the
    state store's, estimated without a round trip; eager mode's own clock); ``header`` is
    the name of the budget header to send (``None``: none).
    """

    deadline: float
    started: float
    clock: Callable[[], float]
    header: str | None = None

    def left(self) -> float:
        """Seconds left of the deadline now (0 once it has passed)."""
        left = remaining_budget(self.deadline, self.started, self.clock())
        return 0.0 if left is None else left


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "celery_resilience_budget", default=None
)


def current_budget() -> Budget | None:
    """The budget bound in the current context (``None``: no deadline, or no attempt)."""
    return _budget.get()


def bind_budget(budget: Budget | None) -> AbstractContextManager[Budget | None]:
    """Bind ``budget`` for the block (``None`` unbinds an outer one: a task without a
    deadline run eagerly inside one with a deadline is not bound by the outer's)."""
    return _Binding(budget)


class _Binding:
    """What :func:`bind_budget` returns (a class, not a generator: entered per attempt)."""

    __slots__ = ("_entered", "_token", "_value")

    def __init__(self, budget: Budget | None) -> None:
        self._value = budget
        self._entered = False

    def __enter__(self) -> Budget | None:
        if self._entered:  # as a generator's: one block per call
            raise RuntimeError("bind_budget() is entered once; call it again for another")
        self._entered = True
        self._token = _budget.set(self._value)
        return self._value

    def __exit__(self, *_: object) -> None:
        _budget.reset(self._token)
