"""What happens when Redis cannot be reached: a per-process store, logged once.

``FallbackStore`` wraps the shared store. While Redis answers, it is a pass-through.
When a call fails with a connection error, it logs one warning for the outage (not one
per task), counts the fallback, and answers from a per-process :class:`MemoryStore`
(``mode="allow"``, fail-open) or tells every attempt to wait (``mode="defer"``). It
tries Redis again at most once per ``retry_every`` seconds and logs when it is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Literal, TypeVar

from celery_resilience.core import clock
from celery_resilience.core.gates import (
    BreakerStatus,
    Denial,
    GateAnswer,
    GateAsk,
    LimiterStatus,
    OutcomeReport,
    RecordAnswer,
)
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.state.base import StateStore
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.memory import MemoryStore

__all__ = ["FallbackMode", "FallbackStore"]

logger = logging.getLogger("celery_resilience.state")

#: Errors that mean "the store cannot serve us now": unreachable, but also out of memory,
#: read-only after a failover, loading, a cluster down, credentials refused. A task must
#: neither fail nor wait for them: the fallback answers, and one line says why.
FallbackMode = Literal["allow", "defer"]
_T = TypeVar("_T")


class FallbackStore:
    """The shared store, with a logged, counted, per-process fallback."""

    def __init__(
        self,
        primary: StateStore,
        *,
        mode: FallbackMode = "allow",
        retry_every: float = 2.0,
        defer_for: float = 5.0,
        describe: str = "Redis",
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        if mode not in ("allow", "defer"):
            raise ValueError(f"resilience_fallback must be 'allow' or 'defer', got {mode!r}")
        self.primary = primary
        self.local = MemoryStore()
        self.mode: FallbackMode = mode
        self.retry_every = retry_every
        self.defer_for = defer_for
        self.describe = describe
        self.fallbacks = 0
        self._on_fallback = on_fallback
        self._down_since: float | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """True while the shared store is unreachable and the fallback answers."""
        return self._down_since is not None

    def _call(self, op: Callable[[], _T]) -> _T | None:
        """Run ``op`` against Redis unless it is known down; None means "fall back"."""
        now = clock.monotonic()
        if self._down_since is not None and now < self._next_try:
            self._count()
            return None
        try:
            result = op()
        except STORE_ERRORS as exc:
            with self._lock:
                first = self._down_since is None
                if first:
                    self._down_since = now
                self._next_try = now + self.retry_every
            if first:
                logger.warning(
                    "celery-resilience: %s unreachable or failing (%s: %s); gates fall back to "
                    "per-process state (%s) until it answers again",
                    self.describe,
                    type(exc).__name__,
                    _short(exc),
                    "fail-open" if self.mode == "allow" else "deferring every attempt",
                )
            self._count()
            return None
        if self._down_since is not None:
            with self._lock:
                down_for = now - self._down_since
                self._down_since = None
            logger.warning(
                "celery-resilience: %s answers again after %.1f s; back to shared state",
                self.describe,
                down_for,
            )
        return result

    def _count(self) -> None:
        with self._lock:
            self.fallbacks += 1
        if self._on_fallback is not None:
            self._on_fallback()

    def gate(self, ask: GateAsk) -> GateAnswer:
        """Ask Redis; if it is down, the local store (or a deferral)."""
        answer = self._call(lambda: self.primary.gate(ask))
        if answer is not None:
            return answer
        if self.mode == "defer":
            return GateAnswer(
                allowed=False,
                now=clock.now(),
                wait=self.defer_for,
                denial=Denial.BACKEND_DOWN,
                fallback=True,
            )
        return replace(self.local.gate(ask), fallback=True)

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report to Redis; if it is down, to the local store."""
        answer = self._call(lambda: self.primary.record(report))
        if answer is not None:
            return answer
        return replace(self.local.record(report), fallback=True)

    def breaker(
        self, policy: CircuitBreaker, op: Literal["status", "open", "close", "reset"] = "status"
    ) -> BreakerStatus:
        """Breaker administration always speaks to Redis: errors propagate."""
        return self.primary.breaker(policy, op)

    def limiter(
        self, policy: RateLimit | None, concurrency: ConcurrencyLimit | None, name: str
    ) -> LimiterStatus:
        """Limiter status always speaks to Redis: errors propagate."""
        return self.primary.limiter(policy, concurrency, name)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
