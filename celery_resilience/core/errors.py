"""Exceptions of celery-resilience.

```text
ResilienceError                 root of everything raised here
├── TransientError              task code: "this failure may pass, retry me"
├── PermanentError              task code: "retrying cannot help, fail now"
├── GaveUp                      final failure: retries or deadline exhausted
├── Rescheduled                 handed to Task.retry; its repr is the ledger line
│   ├── RetryScheduled          a failed attempt, retried after a countdown
│   └── Deferred                a gate said "not now"; no retry is spent
├── BreakerOpenError            on_open="fail": the breaker refused the call
├── DeadlineSpent               an outbound call not started: too little of the deadline left
└── ResilienceConfigError       bad configuration found at run time (also a ValueError)
```

Every error takes only optional arguments and keeps its message in ``args``, so it
survives pickling and Celery's JSON exception round trip through a result backend.
"""

from __future__ import annotations

import math

__all__ = [
    "MAX_TASK_RETRY_AFTER",
    "BreakerOpenError",
    "DeadlineSpent",
    "Deferred",
    "GaveUp",
    "PermanentError",
    "Rescheduled",
    "ResilienceConfigError",
    "ResilienceError",
    "RetryScheduled",
    "TransientError",
    "clamp_retry_after",
    "deadline_spent",
]


#: The longest ``retry_after`` (seconds) a task may ask for with :class:`TransientError`:
#: one day. Longer (``1e9``, ``inf``) is clamped to it; an upstream's ``Retry-After`` is
#: clamped to an hour (``MAX_RETRY_AFTER`` in :mod:`celery_resilience.core.classify`).
MAX_TASK_RETRY_AFTER: float = 86_400.0


def clamp_retry_after(seconds: float) -> float:
    """``seconds`` within [0, :data:`MAX_TASK_RETRY_AFTER`]."""
    return min(max(float(seconds), 0.0), MAX_TASK_RETRY_AFTER)


class ResilienceError(Exception):
    """Root of every exception raised by celery-resilience."""


class TransientError(ResilienceError):
    """Raise from a task body to have the attempt retried with backoff.

    ``retry_after`` (seconds) is a floor for the next countdown, as if the upstream
    had answered with a ``Retry-After`` header; it is clamped to
    ``MAX_TASK_RETRY_AFTER`` (one day).

    ```python
    if payload["status"] == "pending":
        raise TransientError("settlement pending", retry_after=10)
    ```
    """

    def __init__(
        self, message: str = "transient failure", *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
            # NaN stays NaN (the classifier ignores it), anything else is clamped.
            retry_after = retry_after if math.isnan(retry_after) else clamp_retry_after(retry_after)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_transient, (str(self), self.retry_after))


def _rebuild_transient(message: str, retry_after: float | None) -> TransientError:
    return TransientError(message, retry_after=retry_after)


class PermanentError(ResilienceError):
    """Raise from a task body to fail the task at once, without a retry."""

    def __init__(self, message: str = "permanent failure") -> None:
        super().__init__(message)


class GaveUp(ResilienceError):  # noqa: N818 - reads as the outcome it reports
    """The task failed: its retries or its deadline ran out.

    The message is the attempt history, one ledger line per attempt, so that a result
    backend, Flower and a dead letter all carry it. The last underlying exception is
    chained as ``__cause__`` on the worker.
    """

    def __init__(self, message: str = "gave up") -> None:
        super().__init__(message)


class Rescheduled(ResilienceError):  # noqa: N818 - names what happened, not a fault
    """The attempt ended and the task was re-queued. The message is the ledger line.

    Celery reports a retry (in events, Flower and the result backend) by the ``repr`` of
    the exception handed to ``Task.retry``, so ``repr`` is the line itself:

    ```text
    transient: HTTP 503 from api.example.com; attempt 2 of 6; retry in 3.4 s; trace 4bf9…
    ```
    """

    def __init__(self, message: str = "rescheduled") -> None:
        super().__init__(message)

    def __repr__(self) -> str:
        return str(self)


class RetryScheduled(Rescheduled):
    """A failed attempt that will be retried (it spent one of ``max_retries``)."""


class Deferred(Rescheduled):
    """An attempt that a gate (breaker, rate limit, concurrency) sent back to the queue."""


class BreakerOpenError(ResilienceError):
    """The task's breaker was open and its ``on_open`` policy says fail."""

    def __init__(self, message: str = "circuit breaker open") -> None:
        super().__init__(message)


class DeadlineSpent(ResilienceError):  # noqa: N818 - reads as the condition it reports
    """Raised by the task's HTTP session instead of starting a call that cannot finish
    before the task's deadline. The attempt then gives up as by its deadline (``GaveUp``,
    a dead letter), never retried and never charged to a breaker."""

    def __init__(self, message: str = "the task's deadline is spent") -> None:
        super().__init__(message)


def deadline_spent(exc: BaseException | None, depth: int = 8) -> bool:
    """Whether ``exc``, or an explicit cause of it (``raise X from exc``), is a
    :class:`DeadlineSpent`."""
    for _ in range(depth + 1):
        if exc is None:
            return False
        if isinstance(exc, DeadlineSpent):
            return True
        exc = exc.__cause__
    return False


class ResilienceConfigError(ResilienceError, ValueError):
    """Configuration that cannot work, found when the worker starts or a task runs."""

    def __init__(self, message: str = "invalid celery-resilience configuration") -> None:
        super().__init__(message)
