"""What the demo watches while the story runs: task states, breakers, the CRM limiter.

Task states come from the result backend (one ``MGET`` per poll): a resilient task that is
waiting for a retry is in Celery's RETRY state with a ``RetryScheduled`` exception, one that a
gate deferred with a ``Deferred`` one. Breakers and the limiter are read from Redis through
celery-resilience's state store, the same reads as ``celery -A proj resilience status``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery_resilience.core.gates import BreakerState, BreakerStatus
from celery_resilience.integration.runtime import connect
from celery_resilience.integration.settings import read_settings
from celery_resilience.state.redis import RedisStore

if TYPE_CHECKING:
    from celery import Celery

    from celery_resilience.core.limits import CircuitBreaker, RateLimit
    from example_project.story import Send

__all__ = ["OUTCOMES", "BreakerChange", "BreakerWatch", "Sent", "Tracker"]

SIDES = ("resilient", "baseline")
OUTCOMES = ("succeeded", "failed", "gave up", "unfinished")
"""Final outcomes: done; failed at once (a permanent error); out of retries; still waiting."""
_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
_DEFERRED = {"Deferred", "Rescheduled"}


@dataclass
class Sent:
    """One task sent: by which side, what, and what the result backend last said."""

    side: str
    send: Send
    task_id: str
    state: str = "PENDING"
    exc_type: str | None = None
    done_at: float | None = None  # epoch seconds (the result's date_done)

    @property
    def final(self) -> bool:
        """Whether the task has finished, one way or another."""
        return self.state in _FINAL

    @property
    def live(self) -> str:
        """The state as the live view shows it."""
        if self.state == "RETRY":
            return "deferred" if self.exc_type in _DEFERRED else "retrying"
        if self.final:
            return self.outcome
        return "waiting"

    @property
    def outcome(self) -> str:
        """The outcome for the closing report (see :data:`OUTCOMES`)."""
        if self.state == "SUCCESS":
            return "succeeded"
        if not self.final:
            return "unfinished"
        # the baseline retries every error, so a FAILURE there means its retries ran out
        if self.side == "baseline" or self.exc_type == "GaveUp":
            return "gave up"
        return "failed"


class Tracker:
    """The tasks of the story and their latest states."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.sent: list[Sent] = []

    def add(self, side: str, send: Send, task_id: str) -> None:
        """Remember a task just sent."""
        self.sent.append(Sent(side, send, task_id))

    def poll(self) -> None:
        """Read the state of every unfinished task from the result backend."""
        backend: Any = self.app.backend
        pending = [s for s in self.sent if not s.final]
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            values = backend.mget([backend.get_key_for_task(s.task_id) for s in chunk])
            for sent, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    _update(sent, backend.decode(raw))

    def of(self, side: str) -> list[Sent]:
        """The tasks of one side."""
        return [s for s in self.sent if s.side == side]

    def live_counts(self, side: str) -> Counter[str]:
        """How many tasks of ``side`` are in each live state."""
        return Counter(s.live for s in self.of(side))

    def outcomes(self, side: str) -> Counter[str]:
        """How many tasks of ``side`` ended (or not) in each outcome."""
        return Counter(s.outcome for s in self.of(side))

    def settled(self, side: str) -> bool:
        """Whether every task of ``side`` has finished."""
        return all(s.final for s in self.of(side))


def _update(sent: Sent, meta: dict[str, Any]) -> None:
    sent.state = str(meta.get("status", "PENDING"))
    result = meta.get("result")
    sent.exc_type = result.get("exc_type") if isinstance(result, dict) else None
    done = meta.get("date_done")
    if sent.final and isinstance(done, str):
        try:
            sent.done_at = datetime.fromisoformat(done).timestamp()
        except ValueError:
            sent.done_at = time.time()


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A breaker moved from ``old`` to ``new`` at ``at`` (epoch seconds)."""

    at: float
    name: str
    old: str
    new: str
    failure_rate: float
    calls: int


@dataclass
class BreakerWatch:
    """Polls breakers and a rate limiter from Redis and keeps the breakers' transitions."""

    store: RedisStore
    breakers: tuple[CircuitBreaker, ...]
    limiter: RateLimit | None = None
    status: dict[str, BreakerStatus] = field(default_factory=dict)
    changes: list[BreakerChange] = field(default_factory=list)
    limiter_wait: float = 0.0
    paused_for: float = 0.0

    @classmethod
    def for_app(
        cls, app: Celery, breakers: tuple[CircuitBreaker, ...], limiter: RateLimit | None
    ) -> BreakerWatch:
        """Watch ``app``'s state store (its ``resilience_backend_url``, its key prefix)."""
        settings = read_settings(app)
        client = connect(settings.backend_url, timeout=settings.redis_timeout)
        return cls(RedisStore(client, settings.keys), breakers, limiter)

    def poll(self) -> None:
        """Read every breaker (and the limiter); note each change of state."""
        for policy in self.breakers:
            status = self.store.breaker(policy)
            offset = time.time() - status.now  # Redis clock to ours
            before = self.status.get(policy.name)
            self.status[policy.name] = status
            moves = [(t.old.value, t.new.value) for t in status.transitions]
            if before is not None and not moves and status.changed_at > before.changed_at:
                old, new = before.state.value, status.state.value
                half = BreakerState.HALF_OPEN.value
                if old == BreakerState.OPEN.value and new != half:
                    moves = [(old, half), (half, new)]  # probed between two reads
                else:
                    moves = [(old, new)]
            for old, new in moves:
                if old != new:
                    self.changes.append(
                        BreakerChange(
                            status.changed_at + offset, policy.name, old, new,
                            status.failure_rate, status.calls,
                        )
                    )
        if self.limiter is not None:
            limit = self.store.limiter(self.limiter, None, self.limiter.name)
            self.limiter_wait = limit.wait
            self.paused_for = max(limit.paused_until - limit.now, 0.0)

    def reset(self) -> None:
        """Reset every watched breaker to CLOSED with an empty window."""
        for policy in self.breakers:
            self.store.breaker(policy, "reset")

    def state(self, name: str) -> str:
        """The last state read of breaker ``name``."""
        status = self.status.get(name)
        return status.state.value if status is not None else "closed"

    def open_remaining(self, name: str) -> float:
        """Seconds until breaker ``name`` may half-open (0 unless it is open)."""
        status = self.status.get(name)
        if status is None or status.state is not BreakerState.OPEN:
            return 0.0
        return max(status.open_until - status.now, 0.0)

    def close(self) -> None:
        """Close the Redis connection."""
        self.store.client.close()
