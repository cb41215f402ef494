"""What a state store answers: the protocol shared by the Redis store and the fallback.

One attempt costs at most two calls: :meth:`StateStore.gate` before the body (breaker,
concurrency, rate limit and the attempt lease, asked together) and
:meth:`StateStore.record` after it (the outcome, the releases, a limiter pause); a plain
success is counted later with others (:mod:`celery_resilience.state.deferred`). The values
they exchange live in :mod:`celery_resilience.core.gates`.
"""

from __future__ import annotations

from typing import Literal, Protocol

from celery_resilience.core.gates import (
    BreakerStatus,
    GateAnswer,
    GateAsk,
    LimiterStatus,
    OutcomeReport,
    RecordAnswer,
)
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = ["StateStore"]


class StateStore(Protocol):
    """Shared (or local fallback) state behind the gates."""

    def gate(self, ask: GateAsk) -> GateAnswer:
        """Ask every gate of one attempt at once."""
        ...

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report one attempt's outcome."""
        ...

    def breaker(
        self, policy: CircuitBreaker, op: Literal["status", "open", "close", "reset"] = "status"
    ) -> BreakerStatus:
        """Read a breaker, or force it open or closed, or reset it."""
        ...

    def limiter(
        self, policy: RateLimit | None, concurrency: ConcurrencyLimit | None, name: str
    ) -> LimiterStatus:
        """Read a rate limiter and the concurrency limit of the same name."""
        ...
