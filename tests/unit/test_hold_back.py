"""The releaser holds back parked tasks whose breaker would still refuse them."""

from __future__ import annotations

import random

from celery_resilience import CircuitBreaker
from celery_resilience.core.gates import BreakerState, BreakerStatus
from celery_resilience.integration.releaser import hold_back
from celery_resilience.state.parked import ParkedEntry

NOW = 1_000.0
POLICY = CircuitBreaker("pay", open_for=5.0, half_open_calls=2)


def entry(n: int, breaker: str | None = "pay") -> ParkedEntry:
    return ParkedEntry(
        id=f"e{n}",
        task_name="t",
        task_id=f"id{n}",
        reason="breaker_open",
        due=NOW,
        parked_at=NOW - 10,
        message="{}",
        breaker=breaker,
    )


def status(state: BreakerState, *, open_until: float = 0.0, probes: int = 0) -> BreakerStatus:
    return BreakerStatus(
        name="pay",
        state=state,
        failure_rate=1.0,
        calls=10,
        failures=10,
        open_until=open_until,
        open_for=5.0,
        changed_at=NOW - 5,
        probes=probes,
        now=NOW,
        exists=True,
    )


def plan(state: BreakerStatus, entries: list[ParkedEntry]) -> dict[str, float]:
    return hold_back(entries, {"pay": state}, {"pay": POLICY}, random.Random(3), poll=1.0)


def test_open_breaker_holds_every_entry_until_it_may_half_open():
    """Open until NOW+3: each entry waits 3 s plus up to open_for of spread."""
    held = plan(status(BreakerState.OPEN, open_until=NOW + 3), [entry(i) for i in range(5)])
    assert set(held) == {f"e{i}" for i in range(5)}
    assert all(3.0 <= wait <= 8.0 for wait in held.values())


def test_half_open_lets_its_free_probes_go_and_holds_the_rest():
    """Half-open with 2 probe slots, one in use: one entry goes (to probe), others wait."""
    held = plan(status(BreakerState.HALF_OPEN, probes=1), [entry(i) for i in range(4)])
    assert len(held) == 3
    assert all(0.5 <= wait <= 1.5 for wait in held.values())


def test_closed_breaker_and_entries_of_no_breaker_go():
    """A closed breaker holds nothing back; nor does a state unknown to the releaser."""
    assert plan(status(BreakerState.CLOSED), [entry(1), entry(2, breaker=None)]) == {}
    assert hold_back([entry(1)], {}, {"pay": POLICY}, random.Random(1), poll=1.0) == {}


def test_forced_open_holds_for_one_to_two_open_for():
    """Forced open (an operator's): held another open_for or two."""
    held = plan(status(BreakerState.FORCED_OPEN), [entry(1)])
    assert 5.0 <= held["e1"] <= 10.0
