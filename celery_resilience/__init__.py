"""celery-resilience: Celery tasks that survive flaky upstreams."""

from celery_resilience.errors import GaveUp, PermanentError, ResilienceError, TransientError
from celery_resilience.policy import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = [
    "CircuitBreaker",
    "ConcurrencyLimit",
    "GaveUp",
    "PermanentError",
    "RateLimit",
    "ResilienceError",
    "TransientError",
]
