"""celery-resilience: Celery tasks that survive flaky upstreams.

Failures are classified (transient, permanent, rate-limited), retried without blocking a
worker, gated by a circuit breaker and limits shared through Redis, and traced by one ID
across every attempt.
"""

from celery_resilience import signals
from celery_resilience.bootstep import connect as _connect_bootstep
from celery_resilience.classify import Verdict
from celery_resilience.decorator import resilient_task
from celery_resilience.errors import (
    BreakerOpenError,
    Deferred,
    GaveUp,
    PermanentError,
    Rescheduled,
    ResilienceError,
    Retrying,
    TransientError,
)
from celery_resilience.hooks import connect as _connect_hooks
from celery_resilience.policy import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.task import ResilientTask

__all__ = [
    "BreakerOpenError",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "Deferred",
    "GaveUp",
    "PermanentError",
    "RateLimit",
    "Rescheduled",
    "ResilienceError",
    "ResilientTask",
    "Retrying",
    "TransientError",
    "Verdict",
    "resilient_task",
    "signals",
]

_connect_hooks()
_connect_bootstep()
