"""Grants ahead, the pure parts: which asks may be given any, how a process hands out
what it holds, and how many it asks for."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience.core.ahead import AHEAD_FOR, MOST_AHEAD, Ahead, Demand, may_ask_ahead
from celery_resilience.core.gates import GateAsk
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

BREAKER = CircuitBreaker("api")
LIMIT = RateLimit("api", "500/s")
PLAIN = GateAsk(holder="t:1", breaker=BREAKER, limiter=LIMIT)


def test_a_first_attempt_behind_a_breaker_or_a_limit_may_ask_ahead():
    assert may_ask_ahead(PLAIN)
    assert may_ask_ahead(replace(PLAIN, limiter=None))
    assert may_ask_ahead(replace(PLAIN, breaker=None))
    # a half-open probe's lease is asked for by every attempt; the gate gives a probe none
    assert may_ask_ahead(replace(PLAIN, throttle_draw=0.3, limiter_max_wait=5.0, probe_lease=5.0))


@pytest.mark.parametrize(
    "ask",
    [
        GateAsk(holder="t:1"),
        replace(PLAIN, concurrency=ConcurrencyLimit("api", 3)),
        replace(PLAIN, attempt_key="resilience:attempt:t:1"),
        replace(PLAIN, retry=True),
        replace(PLAIN, booked_slot=12.5),
        replace(PLAIN, limiter_book=True),
        replace(PLAIN, breaker=CircuitBreaker("api", retry_budget=0.2)),
        replace(PLAIN, breaker=CircuitBreaker("api", key=lambda a, k: "x").bind("acme")),
        replace(PLAIN, limiter=RateLimit("api", "500/s", key=lambda a, k: "x").bind("acme")),
    ],
    ids=[
        "nothing",
        "concurrency",
        "attempt lease",
        "retry",
        "booked slot",
        "booking",
        "retry budget",
        "keyed breaker",
        "keyed limit",
    ],
)
def test_what_holds_a_lease_or_a_key_never_asks_ahead(ask):
    assert not may_ask_ahead(ask)


def test_grants_are_handed_out_in_order_each_when_due():
    held = Ahead(slots=(10.0, 10.002, 10.004), until=10.1)
    first = held.take(10.001)
    assert first is not None
    assert first[0] == 0.0
    second = first[1].take(10.001)
    assert second is not None
    assert second[0] == pytest.approx(0.001)
    assert second[1].slots == (10.004,)


def test_nothing_is_handed_out_at_or_after_the_end():
    held = Ahead(slots=(10.0, 10.05, 10.099), until=10.1)
    assert held.take(10.1) is None
    assert held.take(10.2) is None
    # a grant due at the very end is void: waiting for it would outlast the others' view
    assert Ahead(slots=(10.1,), until=10.1).take(10.0) is None
    assert Ahead(slots=(), until=10.1).take(10.0) is None


@given(
    slots=st.lists(st.floats(0, 0.2), max_size=40).map(sorted),
    now=st.floats(0, 0.3),
)
def test_a_grant_ahead_is_never_used_early_nor_late(slots, now):
    held = Ahead(slots=tuple(slots), until=AHEAD_FOR)
    while (got := held.take(now)) is not None:
        wait, rest = got
        assert wait >= 0
        assert now + wait >= held.slots[0]
        assert now + wait < held.until
        assert len(rest.slots) == len(held.slots) - 1
        held = rest


def test_a_lone_attempt_asks_for_none():
    assert Demand().count(5.0).wanted() == 0


def test_a_busy_process_asks_for_what_it_used_in_the_last_span():
    demand = Demand()
    for i in range(10):
        demand = demand.count(5.0 + i * AHEAD_FOR / 10)
    assert demand.wanted() == 9
    demand = demand.count(5.0 + AHEAD_FOR)  # the next span: the last one's 10 count
    assert demand.wanted() == 10


def test_a_process_asks_for_no_more_than_its_setting():
    demand = Demand()
    for i in range(50):
        demand = demand.count(5.0 + i * 0.001)
    assert demand.wanted() == MOST_AHEAD
    assert demand.wanted(8) == 8
    assert demand.wanted(0) == 0


def test_an_idle_spell_forgets_the_demand():
    demand = Demand()
    for i in range(20):
        demand = demand.count(5.0 + i * 0.001)
    assert demand.count(5.0 + 3 * AHEAD_FOR).wanted() == 0


@given(st.lists(st.floats(0, 2.0), min_size=1, max_size=300).map(sorted))
def test_demand_never_asks_for_more_than_recent_attempts_nor_the_cap(times):
    demand = Demand()
    for i, now in enumerate(times):
        demand = demand.count(now)
        recent = sum(1 for t in times[: i + 1] if t > now - 3 * AHEAD_FOR)
        assert 0 <= demand.wanted() <= min(MOST_AHEAD, recent - 1)
