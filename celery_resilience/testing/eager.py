"""An app in eager mode for a test: an in-memory store of its own, a clock that stands
still until a wait moves it, and seeded jitter; everything put back afterwards."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from celery_resilience.integration.eager import EagerGates, eager_gates, set_eager_gates

__all__ = ["FROZEN_AT", "FakeClock", "eager_app"]

#: Where the eager clock of a test starts: 2026-01-01 00:00:00 UTC.
FROZEN_AT = 1_767_225_600.0

_EAGER_SETTINGS = ("task_always_eager", "task_eager_propagates")


@contextmanager
def eager_app(
    app: Celery, *, seed: int | None = 0, propagate: bool = True, frozen_at: float = FROZEN_AT
) -> Iterator[Celery]:
    """Run ``app``'s tasks eagerly inside the block, on fresh in-memory gates.

    The gates' clock stands at ``frozen_at`` and moves only by the waits eager mode skips
    (or :meth:`FakeClock.advance`); the ``random`` module, where the backoff draws its
    jitter, is seeded with ``seed`` (None: left alone), so countdowns are the same on every
    run. On exit the app's settings, its former gates and the ``random`` state come back.
    """
    saved = {name: app.conf.get(name) for name in _EAGER_SETTINGS}
    random_state = random.getstate()
    old_gates = set_eager_gates(app, EagerGates(frozen_at=frozen_at))
    app.conf.update(task_always_eager=True, task_eager_propagates=propagate)
    if seed is not None:
        random.seed(seed)
    try:
        yield app
    finally:
        app.conf.update(saved)
        set_eager_gates(app, old_gates)
        random.setstate(random_state)


class FakeClock:
    """The clock of an app's eager gates: breakers, limiters and deadlines read it."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def now(self) -> float:
        """The gates' time, in seconds since the epoch."""
        return eager_gates(self.app).now()

    @property
    def skipped(self) -> float:
        """The seconds the clock was moved on (waits skipped and :meth:`advance`)."""
        return eager_gates(self.app).skipped

    def advance(self, seconds: float) -> None:
        """Move the clock on: an open breaker half-opens, a rate-limit slot comes, ..."""
        if seconds < 0:
            raise ValueError(f"the clock does not go back ({seconds} s)")
        eager_gates(self.app).skip(seconds)
