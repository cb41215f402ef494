"""Grants ahead: gate grants a busy process hands out itself, for a moment.

A gated attempt asks Redis before its body: one round trip. A process that makes many
attempts a second behind the same breaker and rate limit may be given, with the grant
of the attempt that asked, up to :data:`MOST_AHEAD` grants more (``gate.lua``), and
hands them to its next attempts without asking again. The gate gives them only when
nothing is lost by it:

- the breaker is CLOSED and sheds nothing (no adaptive throttling at work, no retry
  budget); its verdict is then at most :data:`AHEAD_FOR` seconds old when a grant ahead
  is used, as a success counted late is (a failure of this process voids what it holds);
- the rate limit allows at least 100 calls a second (below that a round trip per call
  costs nothing worth saving), has a burst above 1 and nobody has booked a slot ahead on
  it; grants ahead come out of its burst and are usable at once: while they are held,
  the burst left to everyone else is smaller by them, and once void they count as calls
  made at the last moment they could be used, so no window of the limit ever holds more
  calls than its rate and burst allow, however late a process uses them;
- the attempt holds nothing of its own (half-open probe, concurrency slot, attempt
  lease) and no part is keyed.

A process asks for as many as it made attempts in the last :data:`AHEAD_FOR` seconds (at
most ``resilience_grants_ahead``, :data:`MOST_AHEAD` by default), so a process that stops
using them leaves at most that many unused (a rate limit loses them for that moment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery_resilience.core.gates import GateAsk

if TYPE_CHECKING:
    from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = ["AHEAD_FOR", "MOST_AHEAD", "Ahead", "Demand", "may_ask_ahead", "may_go_ahead"]

#: Seconds a grant ahead stays usable (the same in ``gate.lua``).
AHEAD_FOR = 0.1
#: The most grants ahead one call asks for, by default (``resilience_grants_ahead``).
MOST_AHEAD = 32


def may_ask_ahead(ask: GateAsk) -> bool:
    """Whether ``ask`` is of the kind that may be given grants ahead (the gate judges the
    breaker's and the limiter's state)."""
    return may_go_ahead(
        ask.breaker,
        ask.limiter,
        concurrency=ask.concurrency,
        attempt_key=ask.attempt_key,
        retry=ask.retry,
        booked=ask.booked_slot is not None or ask.limiter_book,
    )


def may_go_ahead(
    breaker: CircuitBreaker | None,
    limiter: RateLimit | None,
    *,
    concurrency: ConcurrencyLimit | None,
    attempt_key: str | None,
    retry: bool,
    booked: bool,
) -> bool:
    """:func:`may_ask_ahead` over the values an ask would carry, for an attempt that
    looks for a grant ahead before it builds one (``booked``: it comes with a booked
    rate-limit slot, or books one)."""
    return (
        (breaker is not None or limiter is not None)
        and concurrency is None
        and attempt_key is None
        and not retry
        and not booked
        and (breaker is None or (breaker.bound_key is None and breaker.retry_budget is None))
        and (limiter is None or limiter.bound_key is None)
    )


@dataclass(frozen=True, slots=True)
class Ahead:
    """Grants ahead held by a process: from when each may be used, in order, and when
    they are all void; on one clock (the process's monotonic clock)."""

    slots: tuple[float, ...]
    until: float

    def take(self, now: float) -> tuple[float, Ahead] | None:
        """The next grant: (seconds to wait for it, the grants left), or None when none
        is left that can be used before :attr:`until`."""
        if not self.slots:
            return None
        wait = max(0.0, self.slots[0] - now)
        while now + wait < self.slots[0]:  # rounded down: wait the least step more
            wait = math.nextafter(wait, math.inf)
        if now + wait >= self.until:
            return None
        return wait, Ahead(self.slots[1:], self.until)


@dataclass(frozen=True, slots=True)
class Demand:
    """Attempts one process made behind the same gates: in the current span of
    :data:`AHEAD_FOR` seconds (from ``start``) and in the one before it."""

    start: float = 0.0
    current: int = 0
    previous: int = 0

    def count(self, now: float) -> Demand:
        """This demand with one more attempt at ``now``."""
        if now - self.start < AHEAD_FOR:
            return Demand(self.start, self.current + 1, self.previous)
        previous = self.current if now - self.start < 2 * AHEAD_FOR else 0
        return Demand(now, 1, previous)

    def wanted(self, most: int = MOST_AHEAD) -> int:
        """How many grants ahead to ask for: as many as the attempts of the last
        :data:`AHEAD_FOR` seconds, at most ``most``; none to a process that made no
        other attempt in that time."""
        return min(most, max(self.previous, self.current - 1))
