"""Put a shared breaker in a given state through the real store, as tests need it."""

from __future__ import annotations

from celery_resilience.core.gates import BreakerState, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.redis import RedisStore
from tests.helpers.polling import wait_until

__all__ = ["half_open"]


def half_open(store: RedisStore, policy: CircuitBreaker) -> None:
    """Open the breaker with one failure (``minimum_calls`` 1), then wait (bounded) until
    it is half-open."""
    report = OutcomeReport(holder="setup", breaker=policy, breaker_outcome="failure")
    assert store.record(report).breaker_state is BreakerState.OPEN
    wait_until(
        lambda: store.breaker(policy).state is BreakerState.HALF_OPEN,
        timeout=10,
        what="the breaker to half-open",
    )
