"""The vocabulary of the gates: what an attempt asks, what the gates answer.

Plain values shared by the decision core, the state stores (Redis and the in-process
fallback) and the drivers. One attempt asks :class:`GateAsk` before its body and reports
an :class:`OutcomeReport` after it; the store answers :class:`GateAnswer` and
:class:`RecordAnswer`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = [
    "AttemptMark",
    "BreakerOutcome",
    "BreakerState",
    "BreakerStatus",
    "Denial",
    "GateAnswer",
    "GateAsk",
    "KeysStatus",
    "LimiterStatus",
    "OutcomeReport",
    "RecordAnswer",
    "Transition",
    "success_deferrable",
]

BreakerOutcome = Literal["success", "failure", "neutral"]
#: What becomes of an attempt's lease: finished; failed and being retried; or dropped
#: because the very same attempt comes back (the body re-queued itself).
AttemptMark = Literal["done", "retried", "released"]


class BreakerState(str, enum.Enum):
    """The state of a circuit breaker, as stored and as shown to operators."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


class Denial(str, enum.Enum):
    """Why a gate said "not now"."""

    BREAKER_OPEN = "breaker_open"
    BREAKER_HALF_OPEN = "breaker_half_open"
    #: adaptive throttling shed this call: the upstream accepts too few of those sent
    THROTTLED = "throttled"
    #: the breaker's retry budget is spent: too many retries for the first attempts sent
    RETRY_BUDGET = "retry_budget"
    CONCURRENCY_FULL = "concurrency_full"
    RATE_LIMITED = "rate_limited"
    RUNNING = "running"  # the same attempt is running elsewhere (a redelivered message)
    DONE = "done"  # the same attempt already finished (a redelivered message)
    #: The same attempt failed and its retry was being published when its worker stopped
    #: (a redelivered message): publish that retry again.
    RETRIED = "retried"
    BACKEND_DOWN = "backend_down"  # the store is unreachable and the fallback says defer


@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker changed state; sent as ``breaker_state_changed`` by whoever caused it."""

    name: str
    old: BreakerState
    new: BreakerState
    failure_rate: float
    calls: int
    #: The key (escaped) of a keyed breaker; ``~overflow`` for its overflow state.
    key: str | None = None


@dataclass(frozen=True, slots=True)
class GateAsk:
    """Everything one attempt asks of the gates, in one round trip."""

    holder: str
    breaker: CircuitBreaker | None = None
    #: How long a half-open probe holds its slot (None: the breaker's ``lease``).
    probe_lease: float | None = None
    #: A number drawn uniformly from [0, 1): the call is shed when it falls below the
    #: share the breaker's adaptive throttling sheds (None: never shed).
    throttle_draw: float | None = None
    #: This attempt follows a failure: the breaker's retry budget, if any, must allow it.
    retry: bool = False
    concurrency: ConcurrencyLimit | None = None
    concurrency_lease: float = 60.0
    concurrency_poll: float = 1.0
    limiter: RateLimit | None = None
    booked_slot: float | None = None
    #: The longest wait worth booking a rate-limit slot for (what is left of a deadline).
    limiter_max_wait: float | None = None
    #: Reserve a rate-limit slot without taking it, even when there is room now: the
    #: answer is a denial with the slot (``wait`` 0 when it is now); the attempt that
    #: comes with ``booked_slot`` is granted it.
    limiter_book: bool = False
    attempt_key: str | None = None
    attempt_lease: float = 60.0
    #: Who holds the attempt lease (a process a worker can tell is dead), if named.
    attempt_owner: str | None = None
    #: Grants wanted ahead, for this process to hand out itself
    #: (:mod:`celery_resilience.core.ahead`).
    ahead: int = 0

    @property
    def empty(self) -> bool:
        """True when there is nothing to ask."""
        return (
            self.breaker is None
            and self.concurrency is None
            and self.limiter is None
            and self.attempt_key is None
        )


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The gates' answer: go, or wait ``wait`` seconds because of ``denial``."""

    allowed: bool
    now: float
    wait: float = 0.0
    denial: Denial | None = None
    breaker_state: BreakerState | None = None
    open_until: float = 0.0
    probe: bool = False
    slot: float | None = None
    #: The share of calls adaptive throttling sheds (with ``denial`` THROTTLED).
    shed: float = 0.0
    #: Retries sent within the breaker's window, and how many it allows (with ``denial``
    #: RETRY_BUDGET).
    retries: tuple[int, float] | None = None
    transitions: tuple[Transition, ...] = ()
    fallback: bool = False
    #: The keyed parts ("b", "c", "l") that shared their name's overflow state.
    overflow: frozenset[str] = frozenset()
    #: Grants ahead (when ``allowed``): the store time from which each may be used.
    ahead: tuple[float, ...] = ()
    #: The store time after which the grants ahead are void.
    ahead_until: float = 0.0


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """The outcome of one attempt, reported to the same gates it asked."""

    holder: str
    breaker: CircuitBreaker | None = None
    breaker_outcome: BreakerOutcome = "neutral"
    probe: bool = False
    concurrency: ConcurrencyLimit | None = None
    limiter: RateLimit | None = None
    pause: float | None = None
    attempt_key: str | None = None
    attempt_mark: AttemptMark = "done"
    #: How long the mark is kept (a redelivered copy may come this late).
    mark_ttl: float = 3600.0
    #: Successes of earlier attempts of this process on the same breaker, not reported
    #: yet (see :attr:`deferrable`): counted in the window before this outcome.
    carried_successes: int = 0
    #: Calls this process sent on grants ahead, not counted yet by the breaker's adaptive
    #: throttling: counted as sent before this outcome.
    carried_sent: int = 0

    @property
    def deferrable(self) -> bool:
        """True when this report may wait to be counted with others (at most about 0.1 s):
        a success that holds nothing anyone else waits for. A failure (it may open the
        breaker), a probe's outcome (it closes or re-opens it), a concurrency slot, a
        limiter pause and an attempt lease's mark (it keeps a copy of the message from
        running the body again) are reported at once."""
        return (
            self.breaker_outcome == "success"
            and self.pause is None
            and success_deferrable(
                self.breaker,
                probe=self.probe,
                concurrency=self.concurrency,
                attempt_key=self.attempt_key,
            )
        )

    @property
    def empty(self) -> bool:
        """True when there is nothing to report."""
        return (
            self.breaker is None
            and self.concurrency is None
            and (self.limiter is None or self.pause is None)
            and self.attempt_key is None
        )


def success_deferrable(
    breaker: CircuitBreaker | None,
    *,
    probe: bool,
    concurrency: ConcurrencyLimit | None,
    attempt_key: str | None,
) -> bool:
    """:attr:`OutcomeReport.deferrable` for the success of an attempt with these gates,
    before a report is built for it."""
    return breaker is not None and not probe and concurrency is None and attempt_key is None


@dataclass(frozen=True, slots=True)
class RecordAnswer:
    """What recording an outcome did to the breaker."""

    now: float
    breaker_state: BreakerState | None = None
    open_until: float = 0.0
    transitions: tuple[Transition, ...] = ()
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A breaker as an operator sees it."""

    name: str
    state: BreakerState
    failure_rate: float
    calls: int
    failures: int
    open_until: float
    open_for: float
    changed_at: float
    probes: int
    now: float
    exists: bool
    transitions: tuple[Transition, ...] = ()
    #: The share of calls adaptive throttling sheds now (0 unless CLOSED).
    shed: float = 0.0
    #: First attempts and retries sent within the window (counted only with a retry budget).
    first_attempts: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class LimiterStatus:
    """A rate limiter (and the concurrency limit of the same name) as an operator sees it."""

    name: str
    wait: float
    paused_until: float
    in_use: int
    now: float
    exists: bool


@dataclass(frozen=True, slots=True)
class KeysStatus:
    """The live keys of one keyed breaker or limit, as an operator sees them."""

    kind: str
    name: str
    #: keys used within the idle time (each has its own state)
    live: int
    #: calls that shared the overflow state (their key found no room under ``max_keys``)
    overflow: int
    #: the busiest live keys (escaped): (key, uses, last use), busiest first
    top: tuple[tuple[str, int, float], ...]
    #: breakers: live keys whose breaker is open or forced open
    open: int
    #: breakers: the overflow state's breaker state (None: never used)
    overflow_state: BreakerState | None
    now: float
