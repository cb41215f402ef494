"""Exceptions of celery-resilience.

::

    ResilienceError                 root of everything raised here
    ├── TransientError              task code: "this failure may pass, retry me"
    ├── PermanentError              task code: "retrying cannot help, fail now"
    ├── GaveUp                      final failure: retries or deadline exhausted
    ├── BreakerOpenError            on_open="fail": the breaker refused the call
    └── ResilienceConfigError       bad configuration found at run time (also a ValueError)

Every error takes only optional arguments and keeps its message in ``args``, so it
survives pickling and Celery's JSON exception round trip through a result backend.
"""

from __future__ import annotations

__all__ = [
    "BreakerOpenError",
    "GaveUp",
    "PermanentError",
    "ResilienceConfigError",
    "ResilienceError",
    "TransientError",
]


class ResilienceError(Exception):
    """Root of every exception raised by celery-resilience."""


class TransientError(ResilienceError):
    """Raise from a task body to have the attempt retried with backoff.

    ``retry_after`` (seconds) is a floor for the next countdown, as if the upstream
    had answered with a ``Retry-After`` header::

        if payload["status"] == "pending":
            raise TransientError("settlement pending", retry_after=10)
    """

    def __init__(self, message: str = "transient failure", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_transient, (str(self), self.retry_after))


def _rebuild_transient(message: str, retry_after: float | None) -> TransientError:
    return TransientError(message, retry_after=retry_after)


class PermanentError(ResilienceError):
    """Raise from a task body to fail the task at once, without a retry."""

    def __init__(self, message: str = "permanent failure"):
        super().__init__(message)


class GaveUp(ResilienceError):  # noqa: N818 - reads as the outcome it reports
    """The task failed: its retries or its deadline ran out.

    The message is the attempt history, one ledger line per attempt, so that a result
    backend, Flower and a dead letter all carry it. The last underlying exception is
    chained as ``__cause__`` on the worker.
    """

    def __init__(self, message: str = "gave up"):
        super().__init__(message)


class BreakerOpenError(ResilienceError):
    """The task's breaker was open and its ``on_open`` policy says fail."""

    def __init__(self, message: str = "circuit breaker open"):
        super().__init__(message)


class ResilienceConfigError(ResilienceError, ValueError):
    """Configuration that cannot work, found when the worker starts or a task runs."""

    def __init__(self, message: str = "invalid celery-resilience configuration"):
        super().__init__(message)
