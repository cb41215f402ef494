"""When a breaker trips, how much adaptive throttling sheds and how many retries a retry
budget allows: the rules and the store."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import CircuitBreaker, RateLimit
from celery_resilience.core.gates import BreakerState, Denial, GateAsk, OutcomeReport
from celery_resilience.core.tripping import (
    CAPACITY_FLOOR,
    PROBE_SPREAD,
    Bucket,
    Probe,
    confidence_z,
    failure_floor,
    held_closed,
    judged_requests,
    probe_of,
    probe_ratio,
    retry_allowance,
    sending_ratio,
    shed_call,
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
    failures=st.integers(0, 10_000),
    k=st.floats(1.0, 4.0),
    minimum=st.integers(1, 20),
)
def test_the_shed_share_is_a_share_and_zero_while_enough_calls_succeed(
    requests, accepts, failures, k, minimum
):
    share = shed_share(requests, accepts, failures, k, minimum)
    assert 0.0 <= share < 1.0
    if k * accepts >= requests or accepts == 0 or requests < minimum or failures == 0:
        assert share == 0.0
    assert shed_share(requests, accepts, failures, 0.0, minimum) == 0.0
    loud = shed_share(requests, accepts, max(failures, accepts), k, minimum)
    assert share <= loud  # fewer failures never shed more


def test_an_overloaded_upstream_is_sent_about_k_times_what_it_accepts():
    """At the fixed point, requests R with accepts A: R * (1 - shed) = K * A (about)."""
    requests, accepts = 1000, 300
    sent = requests * (1 - shed_share(requests, accepts, 100, 1.8, 5))
    assert sent == pytest.approx(1.8 * accepts, rel=0.01)


def test_a_recovered_upstream_is_sent_the_waiting_work_at_once():
    """Many requests (shed tasks asking again), every call sent accepted: nothing is shed;
    one failure in a hundred sheds a fifth of what one in twenty would."""
    assert shed_share(1000, 100, 0, 1.24, 5) == 0.0
    assert shed_share(1000, 100, 1, 1.24, 5) == pytest.approx(shed_share(1000, 100, 5, 1.24, 5) / 5)


FLOOR = 1 + 0.8 * CAPACITY_FLOOR  # the sending ratio at capacity, with throttle=1.8


def _random(sent_odd: int, sent_even: int, share: float, buckets: int = 5) -> Probe:
    """A probe of an upstream accepting ``share`` of calls whatever the load."""
    return Probe(sent_odd, round(sent_odd * share), sent_even, round(sent_even * share),
                 buckets, buckets)  # fmt: skip


def _capacity(sent_odd: int, sent_even: int, capacity: int, buckets: int = 5) -> Probe:
    """A probe of an upstream accepting ``capacity`` calls a bucket at most."""
    return Probe(sent_odd, min(sent_odd, capacity * buckets), sent_even,
                 min(sent_even, capacity * buckets), buckets, buckets)  # fmt: skip


def test_random_failures_keep_the_throttle_and_capacity_brings_it_down():
    assert sending_ratio(_random(330, 210, 0.6), 1.8) == pytest.approx(1.8, abs=0.02)
    assert sending_ratio(_random(330, 210, 0.2), 1.8) == pytest.approx(1.8, abs=0.02)
    assert sending_ratio(_capacity(330, 210, 30), 1.8) == pytest.approx(FLOOR)
    assert not held_closed(300, 540, 100, _random(330, 210, 0.6), 1.8)
    assert held_closed(300, 540, 100, _capacity(330, 210, 30), 1.8)


def test_without_evidence_the_throttle_sends_as_configured_and_holds_the_breaker():
    for probe in (Probe(), Probe(50, 30, 0, 0, 1, 0), Probe(50, 0, 40, 0, 1, 1)):
        assert sending_ratio(probe, 1.8) == pytest.approx(1.8)
        assert held_closed(30, 50, 10, probe, 1.8)
    assert held_closed(30, 50, 10, _random(330, 210, 0.6, buckets=2), 1.8)  # too few buckets
    assert sending_ratio(Probe(), None) == 0.0
    assert sending_ratio(Probe(), 1.0) == 1.0


def test_the_breaker_is_held_closed_only_while_the_throttle_can_pace_the_upstream():
    capacity = _capacity(330, 210, 30)
    assert not held_closed(300, 540, 100, capacity, None)  # no throttle
    assert not held_closed(300, 540, 0, capacity, 1.8)  # no success lately: an outage
    assert not held_closed(400, 540, 100, capacity, 1.8)  # three failures in four


def test_the_probe_weighs_buckets_not_sums():
    """Three odd buckets and two even ones at the same load and acceptance: no evidence
    of capacity, whatever the sums say."""
    probe = Probe(150, 90, 100, 60, 3, 2)
    assert sending_ratio(probe, 1.8) == pytest.approx(1.8)


def test_buckets_running_that_shed_nothing_count_no_more_once_the_throttle_sheds():
    """Two early buckets that sent all there was, the odd one no more accepted than the
    even one, read as capacity; once the throttle sheds, only the buckets that shed or
    follow one that did count."""
    early = [Bucket(10, 40, 24, False), Bucket(11, 44, 24, False)]
    assert probe_of(early, 1, 1) == Probe(44, 24, 40, 24, 1, 1)
    assert sending_ratio(probe_of(early, 1, 1), 1.8) < 1.6
    later = [Bucket(12, 40, 24, True), Bucket(13, 66, 40, False)]
    assert probe_of(early + later, 2, 2) == Probe(66, 40, 40, 24, 1, 1)
    assert sending_ratio(probe_of(early + later, 2, 2), 1.8) == pytest.approx(1.8)
    # a bucket after an empty one (nothing sent, nothing shed) is no evidence either
    assert probe_of([*early, later[0], Bucket(15, 9, 5, False)], 3, 2) == Probe(0, 0, 40, 24, 0, 1)


def _bucket(number: int, sent: int, share: float, shed: bool) -> Bucket:
    return Bucket(number, sent, round(sent * share), shed)


buckets = st.lists(
    st.builds(_bucket, st.integers(0, 15), st.integers(0, 200), st.floats(0, 1), st.booleans()),
    max_size=12,
    unique_by=lambda b: b.number,
)


@given(found=buckets, empty=st.integers(0, 4))
def test_the_probe_counts_the_buckets_that_shed_and_those_after_them(found, empty):
    """While nothing is shed, the probe is the plain sums over every bucket (with the
    counts given, empty buckets included); once something is, over the buckets that shed
    or follow one that did, of which it counts each kind."""
    odd_n = sum(b.number % 2 for b in found) + empty
    even_n = len(found) - odd_n + 2 * empty
    probe = probe_of(found, odd_n, even_n)
    shed = {b.number for b in found if b.shed}
    kept = [b for b in found if not shed or b.number in shed or b.number - 1 in shed]
    for odd, (sent_at, accepted_at, count_at) in {True: (0, 1, 4), False: (2, 3, 5)}.items():
        kind = [b for b in kept if (b.number % 2 == 1) is odd]
        assert probe[sent_at] == sum(b.sent for b in kind)
        assert probe[accepted_at] == sum(b.accepted for b in kind)
        assert probe[count_at] == (len(kind) if shed else odd_n if odd else even_n)
    assert probe_of(reversed(found), odd_n, even_n) == probe  # in any order


sent = st.integers(0, 5_000)


@given(
    so=sent, se=sent, ao=sent, ae=sent,
    odd=st.integers(0, 10), even=st.integers(0, 10), k=st.floats(1.0, 4.0),
)  # fmt: skip
def test_the_sending_ratio_lies_between_the_floor_and_the_throttle(so, se, ao, ae, odd, even, k):
    probe = Probe(so, min(ao, so), se, min(ae, se), odd, even)
    ratio = sending_ratio(probe, k)
    assert 1 + (k - 1) * CAPACITY_FLOOR - 1e-9 <= ratio <= k + 1e-9
    assert probe_ratio(ratio, odd=True) >= ratio >= probe_ratio(ratio, odd=False) >= 1.0
    assert probe_ratio(ratio, odd=True) - ratio == pytest.approx(
        (ratio - 1) * PROBE_SPREAD, abs=1e-9
    )


@given(extra=st.integers(1, 200), share=st.floats(0.05, 1.0))
def test_accepts_that_grow_with_sends_never_lower_the_ratio(extra, share):
    """Of two probes alike but for what the busier buckets got accepted, the one whose
    accepts grew more keeps the higher ratio."""
    flat = Probe(200 + extra, 120, 200, 120, 5, 5)
    grown = Probe(200 + extra, 120 + round(extra * share), 200, 120, 5, 5)
    assert sending_ratio(grown, 1.8) >= sending_ratio(flat, 1.8) - 1e-12


def test_requests_are_judged_at_their_recent_rate_only_at_capacity():
    assert judged_requests(300, 450, 1.8, 1.8) == 300  # accepts grow with sends
    assert judged_requests(300, 450, FLOOR, 1.8) == pytest.approx(450)  # at capacity
    assert judged_requests(300, 150, FLOOR, 1.8) == pytest.approx(150)  # requests falling
    assert 300 < judged_requests(300, 450, 1.5, 1.8) < 450
    assert judged_requests(300, 450, 1.0, None) == judged_requests(300, 450, 1.0, 1.0) == 300


@given(
    req=st.integers(0, 5_000),
    at_rate=st.floats(0, 20_000),
    low=st.floats(0, 1),
    high=st.floats(0, 1),
    k=st.floats(1.01, 4.0),
)
def test_judged_requests_move_toward_the_recent_rate_as_the_ratio_falls(req, at_rate, low, high, k):
    low, high = sorted((low, high))
    floor = 1 + (k - 1) * CAPACITY_FLOOR
    lower, upper = (floor + (k - floor) * share for share in (low, high))
    nearer, farther = (
        judged_requests(req, at_rate, lower, k),
        judged_requests(req, at_rate, upper, k),
    )
    assert min(req, at_rate) - 1e-6 <= nearer <= max(req, at_rate) + 1e-6
    assert abs(nearer - at_rate) <= abs(farther - at_rate) + 1e-6


def test_a_call_is_shed_when_the_draw_falls_below_the_share_and_what_is_owed():
    assert shed_call(0.25, 0.0, 0.5) == (False, 0.25)  # owed 0.25: not shed, still owed
    assert shed_call(0.25, 0.25, 0.4) == (True, -0.5)  # owed 0.5: shed, one call paid off
    assert shed_call(0.25, -0.5, 0.0) == (False, -0.25)  # paid ahead: nothing shed
    assert shed_call(0.0, 0.75, 0.0) == (False, 0.0)  # nothing shed at 0, nothing owed
    assert shed_call(0.5, 7.0, 0.99) == (True, 0.5)  # what is owed is bounded


@given(
    owed=st.floats(-1.0, 1.0, exclude_max=True),
    calls=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0, exclude_max=True)), max_size=400
    ),
)
def test_calls_shed_stay_within_two_of_the_sum_of_their_shares(owed, calls):
    """Whatever the draws and what was owed before, the count shed over any run of calls
    at a share above 0 stays within two of the sum of the shares (within one from nothing
    owed); and what is owed stays within [-1, 1)."""
    start, shed, shares = owed, 0, 0.0
    for share, draw in calls:
        if share <= 0:
            start, owed, shed, shares = 0.0, 0.0, 0, 0.0  # a share of 0 ends the run
            continue
        was_shed, owed = shed_call(share, owed, draw)
        shed += was_shed
        shares += share
        assert -1.0 <= owed < 1.0
        assert abs(shed - shares) <= (1.0 if start == 0 else 2.0) + 1e-9


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
    answer = store.gate(GateAsk(holder=holder, breaker=breaker))  # no draw: never shed
    assert answer.allowed, answer
    store.record(
        OutcomeReport(holder=holder, breaker=breaker, breaker_outcome=outcome)  # type: ignore[arg-type]
    )


def _shedding() -> tuple[MemoryStore, CircuitBreaker]:
    """A store whose breaker has seen 8 failures in 12 calls: closed, and shedding."""
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("flaky", minimum_calls=5)
    for i, outcome in enumerate(["success", "failure", "failure"] * 4):
        clock.now += 0.1
        _call(store, breaker, f"t{i}", outcome)
    return store, breaker


def test_the_store_sheds_calls_when_too_few_are_accepted_and_stays_closed():
    store, breaker = _shedding()
    status = store.breaker(breaker)
    assert status.state is BreakerState.CLOSED  # 8 failures of 12: not clearly above 0.5
    assert status.shed == pytest.approx((12 - 1.8 * 4) / 13)  # no evidence: as configured
    shed = store.gate(GateAsk(holder="x", breaker=breaker, throttle_draw=0.1))
    assert (shed.allowed, shed.denial) == (False, Denial.THROTTLED)
    assert shed.wait == pytest.approx(breaker.window / 10)
    assert store.gate(GateAsk(holder="y", breaker=breaker, throttle_draw=0.9)).allowed
    assert store.gate(GateAsk(holder="z", breaker=breaker)).allowed  # no draw: never shed


def test_the_store_sheds_its_share_of_calls_evenly_whatever_the_draws():
    """Calls that all draw 0.5 while the share is below 0.5 would all go through on
    independent draws; what earlier calls owe to shedding sheds some of them."""
    store, breaker = _shedding()
    answers = [
        store.gate(GateAsk(holder=f"s{i}", breaker=breaker, throttle_draw=0.5)) for i in range(20)
    ]
    early = [a for a in answers[:5] if not a.allowed]  # shares rise from about 0.3
    assert 1 <= len(early) <= 3
    assert all(0 < a.shed < 0.5 for a in early)  # shed though the draw was above the share
    assert 6 <= sum(not a.allowed for a in answers) <= 14


def test_an_outage_is_not_throttled_but_cut_off_by_the_breaker():
    clock = Clock()
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("down", minimum_calls=5)
    for i in range(5):
        clock.now += 0.1
        _call(store, breaker, f"t{i}", "failure")
    assert store.breaker(breaker).state is BreakerState.OPEN


def _buckets(store, breaker, clock, plan, tag):
    """One bucket (a tenth of the window) per (sent, accepted) pair, the failures first
    and the successes spread among them; the breaker's state after each bucket."""
    states = []
    for b, (sent, accepted) in enumerate(plan):
        start = clock.now
        outcomes = ["failure"] * (sent - accepted)
        for j in range(accepted):
            outcomes.insert(j * 2 % (len(outcomes) + 1), "success")
        for i, outcome in enumerate(outcomes):
            clock.now = start + (i + 0.5) * breaker.window / 10 / len(outcomes)
            store.record(OutcomeReport(holder=f"{tag}{b}.{i}", breaker=breaker,
                                       breaker_outcome=outcome))  # fmt: skip
        clock.now = start + breaker.window / 10
        states.append(store.breaker(breaker).state)
    return states


def test_an_upstream_at_capacity_is_throttled_not_cut_off():
    """60 % of calls fail in every pair of buckets, the busier bucket of each pair getting
    no more accepted than the quieter: at capacity, the breaker stays closed, however
    clear the share (under two thirds); once no call succeeds for the throttle's horizon,
    it opens."""
    clock = Clock()
    clock.now = 1000.0  # a bucket boundary, an even bucket first
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("overloaded")
    states = _buckets(store, breaker, clock, [(25, 15), (50, 15)] * 4, "o")
    assert set(states) == {BreakerState.CLOSED}
    status = store.breaker(breaker)
    assert trips(status.failures, status.calls, failure_rate=0.5, minimum_calls=5, z=Z)
    assert _buckets(store, breaker, clock, [(20, 0)] * 4, "d")[-1] is BreakerState.OPEN


def _sent(store, breaker, clock, plan, tag, *, shed_one=False):
    """One bucket per (sent, accepted) pair, each call through the gate (never shed: no
    draw) and recorded, the successes first; the clock then at the next bucket's start.
    With ``shed_one``, the calls of each bucket draw 0 until one of them is shed, which
    is then asked again without a draw."""
    for b, (sent, accepted) in enumerate(plan):
        start = clock.now
        draw = 0.0 if shed_one else None
        for i in range(sent):
            clock.now = start + (i + 0.5) * breaker.window / 10 / sent
            ask = GateAsk(holder=f"{tag}{b}.{i}", breaker=breaker, throttle_draw=draw)
            if not store.gate(ask).allowed:
                draw = None
                assert store.gate(replace(ask, throttle_draw=None)).allowed
            outcome = "success" if i < accepted else "failure"
            store.record(OutcomeReport(holder=f"{tag}{b}.{i}", breaker=breaker,
                                       breaker_outcome=outcome))  # fmt: skip
        assert draw is None or not shed_one, "no call of the bucket was shed"
        clock.now = start + breaker.window / 10


@pytest.mark.parametrize(
    ("evidence", "growing_sheds_more"),
    [([(4, 3), (6, 3)] * 4, True), ([(4, 2), (8, 4)] * 4, False)],
    ids=["at capacity", "failing at random"],
)
def test_requests_growing_at_capacity_are_shed_at_their_recent_rate(evidence, growing_sheds_more):
    """The same calls sent and accepted over the throttle's horizon, in the same buckets
    of each parity, steady or growing: at capacity (the busier buckets get no more
    accepted) the growing ones are shed more; failing at random, alike."""
    sheds = []
    for tail in ([(6, 2), (6, 2), (6, 2)], [(4, 2), (6, 2), (8, 2)]):
        clock = Clock()
        clock.now = 1000.0
        store = MemoryStore(now=clock)
        breaker = CircuitBreaker("busy", minimum_calls=5)
        _sent(store, breaker, clock, evidence + tail, "c")
        assert store.breaker(breaker).state is BreakerState.CLOSED
        sheds.append(store.breaker(breaker).shed)
    steady, growing = sheds
    assert steady > 0
    if growing_sheds_more:
        assert growing > steady + 0.05
    else:
        assert growing == pytest.approx(steady, abs=0.01)


def test_buckets_that_shed_nothing_count_no_more_once_the_throttle_sheds():
    """Two histories alike but for their first four buckets, which shed nothing: in one
    the busier buckets got no more accepted (capacity, it seems), in the other twice as
    many. Then four buckets, the quieter ones shedding a call each and the busier ones
    nothing (they count as the buckets after one that shed): the throttle sheds the same
    share after both."""
    shares = []
    for early in ([(6, 2), (10, 2)] * 2, [(6, 2), (12, 4)] * 2):
        clock = Clock()
        clock.now = 1000.0
        store = MemoryStore(now=clock)
        breaker = CircuitBreaker("busy", failure_rate=0.9, minimum_calls=5)
        _sent(store, breaker, clock, early, "e")
        for b, plan in enumerate([(6, 2), (12, 4)] * 2):
            _sent(store, breaker, clock, [plan], f"l{b}.", shed_one=b % 2 == 0)
        status = store.breaker(breaker)
        assert status.state is BreakerState.CLOSED
        shares.append(status.shed)
    assert shares[0] > 0
    assert shares[0] == pytest.approx(shares[1])


def test_an_upstream_failing_at_random_as_often_opens_the_breaker():
    """The same 60 % failing, but the busier buckets get twice as many accepted: the
    failures do not come from the load, and the breaker opens."""
    clock = Clock()
    clock.now = 1000.0
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("flaky")
    states = _buckets(store, breaker, clock, [(25, 10), (50, 20)] * 4, "r")
    assert BreakerState.OPEN in states


@pytest.mark.parametrize(
    ("plan", "opens"),
    [([(20, 8), (40, 16)], True), ([(20, 10), (30, 10)], False)],
    ids=["failing at random", "at capacity"],
)
def test_while_shedding_the_breaker_is_judged_on_the_tenths_the_probe_counts(plan, opens):
    """60 % failing in every bucket, each bucket shedding a call: failing at random (the
    busier buckets get twice as many accepted) the breaker opens once the probe counts
    three buckets of each kind; at capacity it stays closed."""
    clock = Clock()
    clock.now = 1000.0
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("mixed")
    opened_in = None
    for b, (sent, accepted) in enumerate(plan * 5):
        start, draw = clock.now, 0.0 if b > 0 else None
        for i in range(sent):
            clock.now = start + (i + 0.5) * breaker.window / 10 / sent
            answer = store.gate(GateAsk(holder=f"m{b}.{i}", breaker=breaker, throttle_draw=draw))
            if answer.denial is Denial.THROTTLED:
                draw = None
                answer = store.gate(GateAsk(holder=f"m{b}.{i}", breaker=breaker))
            if answer.denial is Denial.BREAKER_OPEN:
                opened_in = opened_in if opened_in is not None else b
                break
            spread = (i + 1) * accepted // sent > i * accepted // sent  # accepted in sent
            outcome = "success" if spread else "failure"
            store.record(OutcomeReport(holder=f"m{b}.{i}", breaker=breaker,
                                       breaker_outcome=outcome))  # fmt: skip
        assert opened_in is not None or draw is None or b == 0, "no call of the bucket was shed"
        clock.now = start + breaker.window / 10
    assert (opened_in is not None) is opens
    if opens:  # not before three counted buckets of each kind (the first sheds nothing)
        assert opened_in >= 6


def test_three_failures_in_four_open_the_breaker_before_any_evidence():
    clock = Clock()
    clock.now = 1000.0
    store = MemoryStore(now=clock)
    breaker = CircuitBreaker("failing")
    assert _buckets(store, breaker, clock, [(40, 10)], "f") == [BreakerState.OPEN]


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
