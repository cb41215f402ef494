"""The grants ahead one process holds, and its demand (see :mod:`celery_resilience.core.ahead`)."""

from __future__ import annotations

import threading

from celery_resilience.core import clock, process
from celery_resilience.core.ahead import AHEAD_FOR, MOST_AHEAD, Ahead, Demand
from celery_resilience.core.gates import GateAnswer, GateAsk

__all__ = ["GrantsAhead"]

#: The names of an attempt's breaker and rate limit (cheaper to hash than the policies;
#: grants held when a policy's override changes are used for 0.1 s at most, as a grant
#: just made under the old one would be).
_Pair = tuple[str | None, str | None]

#: Pairs of gates remembered before the idle ones are dropped.
_MOST_PAIRS = 256
#: The demand of a pair not seen yet (frozen: shared, not built on every attempt).
_NO_DEMAND = Demand()


class GrantsAhead:
    """Grants ahead held by this process, per pair of breaker and rate limit, and how
    many attempts it makes behind each pair; it asks for ``most`` at most (0: none).
    Thread-safe; a forked child starts empty."""

    def __init__(self, most: int = MOST_AHEAD) -> None:
        self.most = most
        self._lock = threading.Lock()
        self._held: dict[_Pair, Ahead] = {}
        self._demand: dict[_Pair, Demand] = {}
        self._pid = process.pid()

    def take(self, ask: GateAsk) -> float | None:
        """Count one attempt of ``ask``'s gates; hand it a grant ahead if one is held:
        the seconds to wait before it may be used, or None when none is usable."""
        return self._take(_pair(ask), always=True)

    def use(self, breaker: str | None, limiter: str | None) -> float | None:
        """As :meth:`take`, for an attempt behind the breaker and rate limit of these names
        that has built no ask: when no grant is usable, it is not counted (it asks next,
        and is counted then)."""
        return self._take((breaker, limiter), always=False)

    def _take(self, pair: _Pair, *, always: bool) -> float | None:
        now = clock.monotonic()
        with self._lock:
            self._own(now)
            held = self._held.pop(pair, None)
            got = held.take(now) if held is not None else None
            if got is not None or always:
                self._demand[pair] = self._demand.get(pair, _NO_DEMAND).count(now)
            if got is None:
                return None
            wait, rest = got
            if rest.slots:
                self._held[pair] = rest
            return wait

    def wanted(self, ask: GateAsk) -> int:
        """How many grants ahead to ask for with ``ask``."""
        with self._lock:
            demand = self._demand.get(_pair(ask))
            return demand.wanted(self.most) if demand is not None else 0

    def keep(self, ask: GateAsk, answer: GateAnswer, *, sent_at: float) -> None:
        """Hold the grants ahead of ``answer``, asked for at ``sent_at`` (this process's
        clock). Store times are moved to this clock so that no grant is early and none
        outlives its end: the store read its clock after the ask was sent and before the
        reply came, so the start of each is placed by the reply and the end by the ask."""
        if not answer.ahead:
            return
        late = clock.monotonic() - answer.now
        until = answer.ahead_until - answer.now + sent_at
        ahead = Ahead(tuple(t + late for t in answer.ahead), until)
        with self._lock:
            self._held[_pair(ask)] = ahead

    def drop(self, *, breaker: str | None = None, limiter: str | None = None) -> None:
        """Void what is held behind the breaker or the rate limit of that name (it failed,
        or was told to pause)."""
        with self._lock:
            for pair in list(self._held):
                if (breaker is not None and pair[0] == breaker) or (
                    limiter is not None and pair[1] == limiter
                ):
                    del self._held[pair]

    def _own(self, now: float) -> None:
        """Forget a parent's grants after a fork, and pairs idle for a while. Lock held."""
        pid = process.pid()
        if pid != self._pid:
            self._pid = pid
            self._held.clear()
            self._demand.clear()
        if len(self._demand) > _MOST_PAIRS:
            old = now - 2 * AHEAD_FOR
            self._demand = {p: d for p, d in self._demand.items() if d.start > old}
            self._held = {p: a for p, a in self._held.items() if a.until > now}


def _pair(ask: GateAsk) -> _Pair:
    breaker, limiter = ask.breaker, ask.limiter
    return (
        breaker.name if breaker is not None else None,
        limiter.name if limiter is not None else None,
    )
