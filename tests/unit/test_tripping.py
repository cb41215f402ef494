"""When a breaker trips, how much adaptive throttling sheds and how many retries a retry
budget allows: the rules and the store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import CircuitBreaker, RateLimit
from celery_resilience.core.gates import BreakerState, Denial, GateAsk, OutcomeReport
from celery_resilience.core.tripping import (
    confidence_z,
    failure_floor,
    retry_allowance,
    shed_share,
    trips,
)
from celery_resilience.state.memory import MemoryStore

Z = confidence_z(0.95)
counts = st.integers(min_value=0, max_value=5_000)


@given(failures=counts, extra=counts, z=st.sampled_from([0.0, 1.0, Z, 2.5]))
def test_the_floor_lies_below_the_share_and_grows_with_failures(failures, extra, z):
    calls = failures + extra
    floor = failure_floor(failures, calls, z)
    share = failures / calls if calls else 0.0
    assert 0.0 <= floor <= share + 1e-12
    if calls and failures < calls:
        assert failure_floor(failures + 1, calls, z) >= floor


@given(failures=counts, extra=counts)
def test_without_confidence_the_floor_is_the_share(failures, extra):
    calls = failures + extra
    assert failure_floor(failures, calls, 0.0) == (failures / calls if calls else 0.0)


@given(calls=st.integers(min_value=1, max_value=500), minimum=st.integers(1, 50))
def test_a_window_of_failures_only_trips_at_minimum_calls(calls, minimum):
    assert trips(calls, calls, failure_rate=1.0, minimum_calls=minimum, z=Z) == (calls >= minimum)


@pytest.mark.parametrize(
    ("failures", "calls", "expected"),
    [
        (3, 5, False),  # 40 % failing at random: three unlucky calls out of five
        (4, 5, False),
        (5, 5, True),  # an outage
        (7, 8, True),
        (260, 500, False),  # 52 % of a full window: not clearly above one half
        (300, 500, True),  # 60 %: clearly above
    ],
)
def test_a_mixed_window_trips_only_on_evidence(failures, calls, expected):
    assert trips(failures, calls, failure_rate=0.5, minimum_calls=5, z=Z) is expected


def test_confidence_one_half_is_the_plain_share_rule():
    z = confidence_z(0.5)
    assert z == 0.0
    assert trips(3, 5, failure_rate=0.5, minimum_calls=5, z=z)
    assert not trips(2, 5, failure_rate=0.5, minimum_calls=5, z=z)


@given(
    requests=st.integers(0, 10_000),
    accepts=st.integers(0, 10_000),
    k=st.floats(1.0, 4.0),
    minimum=st.integers(1, 20),
)
def test_the_shed_share_is_a_share_and_zero_while_enough_calls_succeed(
    requests, accepts, k, minimum
):
    share = shed_share(requests, accepts, k, minimum)
    assert 0.0 <= share < 1.0
    if k * accepts >= requests or accepts == 0 or requests < minimum:
        assert share == 0.0
    assert shed_share(requests, accepts, None, minimum) == 0.0


def test_an_overloaded_upstream_is_sent_about_k_times_what_it_accepts():
    """At the fixed point, requests R with accepts A: R * (1 - shed) = K * A (about)."""
    requests, accepts = 1000, 300
    sent = requests * (1 - shed_share(requests, accepts, 1.8, 5))
    assert sent == pytest.approx(1.8 * accepts, rel=0.01)


@pytest.mark.parametrize("kwargs", [{"confidence": 1.0}, {"confidence": 0.4}, {"throttle": 0.5}])
def test_bad_confidence_or_throttle_is_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CircuitBreaker("x", **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _call(store: MemoryStore, breaker: CircuitBreaker, holder: str, outcome: str) -> None:
    answer = store.gate(GateAsk(holder=holder, breaker=breaker, throttle_draw=0.99))
    assert answer.allowed, answer
    store.record(
        OutcomeReport(holder=holder, breaker=breaker, breaker_outcome=outcome)  # type: ignore[arg-type]
    )


def test_the_store_sheds_calls_when_too_few_are_accepted_and_stays_closed():
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("flaky", minimum_calls=5)
    for i, outcome in enumerate(["success", "failure", "failure"] * 4):
        clock.now += 0.1
        _call(store, breaker, f"t{i}", outcome)
    status = store.breaker(breaker)
    assert status.state is BreakerState.CLOSED  # 8 failures of 12: not clearly above 0.5
    assert status.shed == pytest.approx((12 - 1.8 * 4) / 13)
    shed = store.gate(GateAsk(holder="x", breaker=breaker, throttle_draw=0.1))
    assert (shed.allowed, shed.denial) == (False, Denial.THROTTLED)
    assert shed.wait == pytest.approx(breaker.window / 10)
    assert store.gate(GateAsk(holder="y", breaker=breaker, throttle_draw=0.9)).allowed
    assert store.gate(GateAsk(holder="z", breaker=breaker)).allowed  # no draw: never shed


def test_an_outage_is_not_throttled_but_cut_off_by_the_breaker():
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("down", minimum_calls=5)
    for i in range(5):
        clock.now += 0.1
        _call(store, breaker, f"t{i}", "failure")
    assert store.breaker(breaker).state is BreakerState.OPEN


def test_without_throttle_nothing_is_shed():
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("plain", minimum_calls=5, throttle=None)
    for i, outcome in enumerate(["success", "failure", "failure"] * 4):
        clock.now += 0.1
        _call(store, breaker, f"t{i}", outcome)
    assert store.breaker(breaker).shed == 0.0
    assert store.gate(GateAsk(holder="x", breaker=breaker, throttle_draw=0.0)).allowed


@given(
    firsts=counts,
    budget=st.floats(min_value=0.01, max_value=5.0),
    floor=st.floats(min_value=0.0, max_value=50.0),
    window=st.floats(min_value=0.5, max_value=600.0),
)
def test_the_retry_allowance_is_the_larger_of_floor_and_share(firsts, budget, floor, window):
    allowed = retry_allowance(firsts, budget=budget, floor=floor, window=window)
    assert allowed >= floor * window
    assert allowed >= budget * firsts
    assert allowed in (floor * window, budget * firsts)
    assert retry_allowance(firsts + 1, budget=budget, floor=floor, window=window) >= allowed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retry_budget": 0}, "retry_budget"),
        ({"retry_budget": -0.2}, "retry_budget"),
        ({"retry_budget": 0.2, "retry_floor": -1}, "retry_floor"),
        ({"retry_budget": 0.2, "retry_exhausted": "fail"}, "retry_exhausted"),
    ],
)
def test_a_bad_retry_budget_is_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CircuitBreaker("x", **kwargs)


def _budget_ask(breaker: CircuitBreaker, holder: str, *, retry: bool) -> GateAsk:
    return GateAsk(holder=holder, breaker=breaker, retry=retry)


def test_retries_beyond_the_budget_are_refused_until_first_attempts_earn_more():
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker(
        "budget", minimum_calls=1000, throttle=None, retry_budget=0.25, retry_floor=0.1
    )
    # the floor: 0.1 a second over 10 s = one retry however few the first attempts
    assert store.gate(_budget_ask(breaker, "r0", retry=True)).allowed
    refused = store.gate(_budget_ask(breaker, "r1", retry=True))
    assert (refused.allowed, refused.denial, refused.retries) == (
        False,
        Denial.RETRY_BUDGET,
        (1, 1.0),
    )
    assert refused.wait == pytest.approx(breaker.window / 10)
    for i in range(8):  # 8 first attempts: 0.25 x 8 = 2 retries
        assert store.gate(_budget_ask(breaker, f"f{i}", retry=False)).allowed
    assert store.gate(_budget_ask(breaker, "r1", retry=True)).allowed
    assert not store.gate(_budget_ask(breaker, "r2", retry=True)).allowed
    status = store.breaker(breaker)
    assert (status.first_attempts, status.retries) == (8, 2)
    clock.now += breaker.window + 1  # the window moves on: the counts go with it
    assert store.gate(_budget_ask(breaker, "r2", retry=True)).allowed


def test_without_a_retry_budget_retries_are_neither_counted_nor_refused():
    store = MemoryStore(now=Clock())
    breaker = CircuitBreaker("free", minimum_calls=1000, throttle=None)
    for i in range(20):
        assert store.gate(_budget_ask(breaker, f"r{i}", retry=True)).allowed
    status = store.breaker(breaker)
    assert (status.first_attempts, status.retries) == (0, 0)


def test_a_retry_refused_by_a_later_gate_is_not_counted():
    store = MemoryStore(now=Clock())
    breaker = CircuitBreaker("later", minimum_calls=1000, throttle=None, retry_budget=0.5)
    limiter = RateLimit("later", "1/s")
    assert store.gate(GateAsk(holder="a", breaker=breaker, limiter=limiter)).allowed
    late = store.gate(GateAsk(holder="b", breaker=breaker, limiter=limiter, retry=True))
    assert late.denial is Denial.RATE_LIMITED
    status = store.breaker(breaker)
    assert (status.first_attempts, status.retries) == (1, 0)
