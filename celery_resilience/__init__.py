"""celery-resilience: Celery tasks that survive flaky upstreams.

Failures are classified (transient, permanent, rate-limited), retried without blocking a
worker, gated by a circuit breaker and limits shared through Redis, and traced by one ID
across every attempt.
"""

__version__ = "0.1.0"

from celery_resilience import signals
from celery_resilience.core.classify import Verdict
from celery_resilience.core.errors import (
    BreakerOpenError,
    DeadlineSpent,
    Deferred,
    GaveUp,
    PermanentError,
    Rescheduled,
    ResilienceConfigError,
    ResilienceError,
    RetryScheduled,
    TransientError,
)
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.integration.decorator import resilient_task
from celery_resilience.integration.task import ResilientTask

__all__ = [
    "BreakerOpenError",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "DeadlineSpent",
    "Deferred",
    "GaveUp",
    "PermanentError",
    "RateLimit",
    "Rescheduled",
    "ResilienceConfigError",
    "ResilienceError",
    "ResilientTask",
    "RetryScheduled",
    "TransientError",
    "Verdict",
    "resilient_task",
    "signals",
]
