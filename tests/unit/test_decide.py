"""The decision core: what happens after the gates, after a failure, on waking.

Every decision is a value computed from values: these tests give it the store's answers
and a seeded random source, and read what it decided.
"""

from __future__ import annotations

import random
from dataclasses import fields, replace

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core import decide, decisions
from celery_resilience.core.classify import Verdict, classify
from celery_resilience.core.errors import PermanentError, TransientError
from celery_resilience.core.gates import BreakerState, Denial, GateAnswer, RecordAnswer
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.options import TaskOptions

NOW = 1_000_000.0
BREAKER = CircuitBreaker("pay", open_for=5.0)
LIMIT = RateLimit("pay", "10/s")
POOL = ConcurrencyLimit("pay", 2)


def attempt(**options: object) -> decisions.Attempt:
    state = options.pop("state", AttemptState())
    assert isinstance(state, AttemptState)
    return decisions.Attempt(
        options=TaskOptions(**options),  # type: ignore[arg-type]
        state=state,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


def rng() -> random.Random:
    return random.Random(7)


def go(**fields: object) -> GateAnswer:
    return GateAnswer(allowed=True, now=NOW, **fields)  # type: ignore[arg-type]


def no(denial: Denial, wait: float, **fields: object) -> GateAnswer:
    return GateAnswer(allowed=False, now=NOW, wait=wait, denial=denial, **fields)  # type: ignore[arg-type]


# -- after the gates --------------------------------------------------------------------


def test_allowed_runs_and_starts_the_deadline_clock():
    """A first attempt let through runs; its start is the store's time of the gate."""
    decision = decide.after_gate(attempt(), go(probe=True), rng())
    assert decision == decisions.Run(state=AttemptState(started=NOW), probe=True)


def test_allowed_keeps_an_earlier_start_and_drops_the_booked_slot():
    """A later attempt keeps the first attempt's start; a booked slot is used up."""
    state = AttemptState(failures=1, started=NOW - 30, slot=("pay", NOW))
    decision = decide.after_gate(attempt(state=state), go(), rng())
    assert isinstance(decision, decisions.Run)
    assert decision.state.started == NOW - 30
    assert decision.state.slot is None


def test_deadline_passed_gives_up_before_the_body():
    """Past the deadline the task gives up, whatever the gates said."""
    state = AttemptState(started=NOW - 11)
    decision = decide.after_gate(attempt(deadline=10.0, state=state), go(), rng())
    assert isinstance(decision, decisions.GiveUp)
    assert decision.reason == "deadline of 10 s passed"
    assert decision.message.startswith("gave up after 1 attempt(s): deadline of 10 s passed")


_STATES = st.builds(
    AttemptState,
    failures=st.integers(0, 5),
    deferrals=st.integers(0, 3),
    started=st.none() | st.floats(NOW - 100, NOW),
    not_before=st.none() | st.floats(NOW - 5, NOW + 5),
    slot=st.none() | st.tuples(st.just("pay"), st.floats(NOW - 1, NOW + 1)),
    history=st.lists(st.text(max_size=5), max_size=2).map(tuple),
    dropped=st.integers(0, 2),
)


@given(
    state=_STATES,
    deadline=st.none() | st.floats(1.0, 200.0),
    now=st.floats(NOW - 1, NOW + 50),
)
def test_an_ungated_attempt_is_decided_as_one_every_gate_lets_through(state, deadline, now):
    """With no gates to ask, the decision is what the gates' "go" at ``now`` would give."""
    chosen = attempt(deadline=deadline, state=state)
    assert decide.ungated(chosen, now) == decide.after_gate(
        chosen, GateAnswer(allowed=True, now=now), rng()
    )


def test_admitted_is_replace_with_the_start_and_no_slot():
    """A state let in keeps every field but its start (given) and its slot (used up)."""
    values: dict[str, object] = {
        "failures": 3,
        "deferrals": 1,
        "started": None,
        "not_before": NOW + 1,
        "slot": ("pay", NOW),
        "history": ("#1 transient: x",),
        "dropped": 2,
    }
    # every field, so that a field added later and left out of admitted() fails here
    assert set(values) == {field.name for field in fields(AttemptState)}
    state = AttemptState(**values)  # type: ignore[arg-type]
    assert state.admitted(NOW) == replace(state, started=NOW, slot=None)


@pytest.mark.parametrize(
    ("denial", "expected"),
    [
        (Denial.DONE, decisions.Duplicate),
        (Denial.RUNNING, decisions.Wait),
        (Denial.RETRIED, decisions.Wait),
    ],
)
def test_copies_of_an_attempt_seen_before_decide_nothing_about_the_task(denial, expected):
    """A redelivered copy is ignored, comes back later, or republishes its retry: quietly,
    and no signal reports it (no deferral, no retry of its own)."""
    decision = decide.after_gate(attempt(), no(denial, 3.0), rng())
    assert isinstance(decision, expected)
    if isinstance(decision, decisions.Wait):
        assert decision.quiet
        assert decision.gate == "duplicate"
        assert decision.state.failures == (1 if denial is Denial.RETRIED else 0)


def test_running_elsewhere_waits_out_the_lease():
    """A copy of a running attempt comes back after the lease; no retry is spent."""
    state = AttemptState(failures=2, started=NOW)
    decision = decide.after_gate(attempt(state=state), no(Denial.RUNNING, 3.0), rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.countdown == pytest.approx(3.0 + decide.REPUBLISH)
    assert decision.state == replace(state, deferrals=1)
    assert not decision.retry


def test_a_retry_lost_with_its_worker_is_published_again():
    """The failed attempt's retry is published again, its failure counted once."""
    decision = decide.after_gate(attempt(), no(Denial.RETRIED, 0.0), rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.retry
    assert decision.countdown == decide.REPUBLISH
    assert decision.state.failures == 1
    assert decision.line.startswith("transient: its worker stopped while publishing the retry")


def test_open_breaker_defers_until_half_open_plus_jitter():
    """An open breaker defers by its wait plus up to open_for of jitter; no retry spent."""
    answer = no(Denial.BREAKER_OPEN, 4.0, breaker_state=BreakerState.OPEN)
    decision = decide.after_gate(attempt(breaker=BREAKER), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert 4.0 <= decision.countdown <= 4.0 + BREAKER.open_for
    assert (decision.gate, decision.name) == ("breaker", "pay")
    assert decision.state.deferrals == 1
    assert decision.state.failures == 0
    assert decision.line.startswith("deferred: breaker 'pay' open, half-open in 4.0 s; attempt 1")


def test_forced_open_breaker_says_so():
    """A breaker an operator forced open is named as such."""
    answer = no(Denial.BREAKER_OPEN, 1.0, breaker_state=BreakerState.FORCED_OPEN)
    decision = decide.after_gate(attempt(breaker=BREAKER), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert "breaker 'pay' forced open" in decision.line


def test_half_open_without_a_probe_slot_defers_about_a_probe_lease():
    """Half-open with its probe in flight: wait plus up to half a probe lease."""
    answer = no(Denial.BREAKER_HALF_OPEN, 1.0, breaker_state=BreakerState.HALF_OPEN)
    decision = decide.after_gate(attempt(breaker=BREAKER), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert 1.0 <= decision.countdown <= 1.0 + 0.5 * BREAKER.lease
    assert "probe in flight" in decision.line


def test_a_long_probe_lease_does_not_hold_the_waiters_as_long():
    """The probe in flight holds its slot for its whole time limit, but mostly ends sooner:
    a waiter looks again after at most the breaker's own lease, plus jitter."""
    answer = no(Denial.BREAKER_HALF_OPEN, 120.0, breaker_state=BreakerState.HALF_OPEN)
    decision = decide.after_gate(attempt(breaker=BREAKER), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert BREAKER.lease <= decision.countdown <= 1.5 * BREAKER.lease


@pytest.mark.parametrize(
    ("breaker", "time_limit", "lease"),
    [
        (BREAKER, 300.0, 305.0),  # the body may run its whole time limit
        (CircuitBreaker("pay", open_for=30.0), 1.0, 30.0),  # never less than open_for
        (CircuitBreaker("pay", probe_lease=9.0), 30.0, 35.0),
        (CircuitBreaker("pay", probe_lease=90.0), 30.0, 90.0),
        (CircuitBreaker("pay", probe_lease=9.0), None, 9.0),  # no limit: as declared
        (BREAKER, None, 60.0),  # no limit, nothing declared: 60 s
        (CircuitBreaker("pay", open_for=120.0), None, 120.0),
    ],
)
def test_a_probe_holds_its_slot_for_its_whole_body(breaker, time_limit, lease):
    """A probe's slot outlasts the longest body its task's time limit allows."""
    assert breaker.lease_for(time_limit) == lease


def test_rate_limit_defers_by_the_exact_wait_and_books_the_slot():
    """No room: deferred by exactly the wait, the booked slot carried to the next attempt."""
    answer = no(Denial.RATE_LIMITED, 0.8, slot=NOW + 0.8)
    decision = decide.after_gate(attempt(limiter=LIMIT), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.countdown == pytest.approx(0.8)
    assert decision.state.slot == ("pay", NOW + 0.8)
    assert decision.gate == "rate_limit"


def test_a_slot_a_moment_away_is_waited_for_in_place_once():
    """A booked slot at most IN_PLACE away: a WaitInPlace (no deferral counted, the slot kept
    for the next ask); asked again once it has waited so, the same wait is a deferral."""
    answer = no(Denial.RATE_LIMITED, 0.1, slot=NOW + 0.1)
    decision = decide.after_gate(attempt(limiter=LIMIT), answer, rng())
    assert isinstance(decision, decisions.WaitInPlace)
    assert decision.seconds == pytest.approx(0.1)
    assert decision.limiter == "pay"
    assert decision.state.slot == ("pay", NOW + 0.1)
    assert decision.state.deferrals == 0
    again = decide.after_gate(attempt(limiter=LIMIT), answer, rng(), may_wait_in_place=False)
    assert isinstance(again, decisions.Wait)
    assert again.state.deferrals == 1


@pytest.mark.parametrize(
    ("wait", "slot", "deadline", "kind"),
    [
        (decide.IN_PLACE, True, None, decisions.WaitInPlace),
        (decide.IN_PLACE + 0.01, True, None, decisions.Wait),  # too far: through the broker
        (0.1, False, None, decisions.Wait),  # nothing booked (the task could not wait)
        (0.1, True, 0.05, decisions.GiveUp),  # the deadline comes first
    ],
)
def test_only_a_booked_slot_within_reach_is_waited_for_in_place(wait, slot, deadline, kind):
    """Waiting in place is for a booked slot within IN_PLACE seconds and before the
    deadline."""
    state = AttemptState(started=NOW)
    fields = {"slot": NOW + wait} if slot else {}
    answer = no(Denial.RATE_LIMITED, wait, **fields)
    subject = attempt(limiter=LIMIT, deadline=deadline, state=state)
    decision = decide.after_gate(subject, answer, rng())
    assert isinstance(decision, kind)


@given(
    wait=st.floats(0.0, 5.0),
    deferrals=st.integers(0, 5),
    rate=st.sampled_from(["1/s", "2/s", "10/s", "100/s", "1000/m"]),
)
def test_a_wait_in_place_never_outlasts_in_place(wait, deferrals, rate):
    """Whatever the wait, one taken in place lasts at most IN_PLACE seconds and
    IN_PLACE_SLOTS of the limit's intervals; longer ones defer."""
    limit = RateLimit("pay", rate)
    reach = min(decide.IN_PLACE, decide.IN_PLACE_SLOTS * limit.interval)
    state = AttemptState(deferrals=deferrals)
    answer = no(Denial.RATE_LIMITED, wait, slot=NOW + wait)
    decision = decide.after_gate(attempt(limiter=limit, state=state), answer, rng())
    if isinstance(decision, decisions.WaitInPlace):
        assert decision.seconds <= reach
    else:
        assert isinstance(decision, decisions.Wait)
        assert wait > reach


@pytest.mark.parametrize(("deferrals", "factor"), [(0, 1), (1, 2), (2, 4), (7, 4)])
def test_concurrency_waiters_poll_less_often_the_longer_they_wait(deferrals, factor):
    """A full pool: the wait grows 1x, 2x, 4x with the deferrals so far, jittered by 1-1.5."""
    state = AttemptState(deferrals=deferrals)
    decision = decide.after_gate(
        attempt(concurrency=POOL, state=state), no(Denial.CONCURRENCY_FULL, 1.0), rng()
    )
    assert isinstance(decision, decisions.Wait)
    assert factor <= decision.countdown <= 1.5 * factor


def test_a_retry_beyond_the_budget_waits_without_spending_a_retry():
    """A retry the breaker's retry budget refuses is deferred (gate "retry_budget"), about
    a bucket of the window, growing with the deferrals; the failures stay as they were."""
    breaker = CircuitBreaker("pay", retry_budget=0.2)
    state = AttemptState(failures=2, deferrals=1)
    answer = no(Denial.RETRY_BUDGET, 1.0, breaker_state=BreakerState.CLOSED, retries=(4, 4.0))
    decision = decide.after_gate(attempt(breaker=breaker, state=state), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert (decision.gate, decision.name, decision.breaker) == ("retry_budget", "pay", None)
    assert 1.0 <= decision.countdown <= 3.0
    assert (decision.state.failures, decision.state.deferrals) == (2, 2)
    assert "retry budget of breaker 'pay' spent (4 retries in 10 s, 4 allowed)" in decision.line


def test_a_retry_beyond_the_budget_gives_up_when_the_breaker_says_so():
    breaker = CircuitBreaker("pay", retry_budget=0.2, retry_exhausted="give_up")
    answer = no(Denial.RETRY_BUDGET, 1.0, breaker_state=BreakerState.CLOSED, retries=(4, 4.0))
    decision = decide.after_gate(
        attempt(breaker=breaker, state=AttemptState(failures=1)), answer, rng()
    )
    assert isinstance(decision, decisions.GiveUp)
    assert decision.reason.startswith("retry budget of breaker 'pay' spent")


def test_unreachable_store_in_defer_mode_defers():
    """Store down and resilience_fallback='defer': deferred by the wait, jittered."""
    decision = decide.after_gate(attempt(), no(Denial.BACKEND_DOWN, 2.0), rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.gate == "backend"
    assert 2.0 <= decision.countdown <= 3.0


def test_on_open_fail_refuses_and_a_callable_answers():
    """on_open='fail' refuses (FAILURE); a callable on_open answers in the task's place."""
    answer = no(Denial.BREAKER_OPEN, 4.0, breaker_state=BreakerState.OPEN)
    refused = decide.after_gate(attempt(breaker=BREAKER, on_open="fail"), answer, rng())
    assert isinstance(refused, decisions.Refuse)
    assert refused.why == "breaker 'pay' open, half-open in 4.0 s"
    assert refused.state.history == ("#1 refused: breaker 'pay' open, half-open in 4.0 s",)
    fallback = decide.after_gate(attempt(breaker=BREAKER, on_open=lambda: 1), answer, rng())
    assert fallback == decisions.UseFallback(why="breaker 'pay' open, half-open in 4.0 s")


def test_a_deferral_that_would_outlive_the_deadline_gives_up():
    """Deferred past the deadline is pointless: the task gives up now."""
    state = AttemptState(started=NOW - 8)
    answer = no(Denial.RATE_LIMITED, 5.0, slot=NOW + 5)
    decision = decide.after_gate(attempt(limiter=LIMIT, deadline=10.0, state=state), answer, rng())
    assert isinstance(decision, decisions.GiveUp)
    assert decision.reason.startswith("deadline of 10 s would pass while deferred (rate limit")


def test_breaker_jitter_never_pushes_past_a_deadline_the_gate_would_meet():
    """The jitter of an open breaker is trimmed to leave room before the deadline."""
    state = AttemptState(started=NOW - 5)
    answer = no(Denial.BREAKER_OPEN, 1.0, breaker_state=BreakerState.OPEN)
    big = CircuitBreaker("pay", open_for=60.0)
    decision = decide.after_gate(attempt(breaker=big, deadline=10.0, state=state), answer, rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.countdown <= 5.0 - 0.5


# -- on waking --------------------------------------------------------------------------


def test_woken_before_a_split_wait_ends_waits_again():
    """A leg of a long wait ended early: wait the rest."""
    state = AttemptState(not_before=NOW + 100)
    decision = decide.on_wake(attempt(state=state), NOW)
    assert isinstance(decision, decisions.Wait)
    assert decision.countdown == pytest.approx(100)
    assert decision.gate == "schedule"


def test_woken_on_time_goes_on():
    """At (or just before) the end of the wait: go on."""
    state = AttemptState(not_before=NOW + 0.01)
    assert decide.on_wake(attempt(state=state), NOW) is None
    assert decide.on_wake(attempt(), NOW) is None


# -- after a failure --------------------------------------------------------------------


def record(**fields: object) -> RecordAnswer:
    return RecordAnswer(now=NOW, **fields)  # type: ignore[arg-type]


def test_permanent_failure_fails_now_and_counts_as_alive():
    """A permanent failure: no retry; for the breaker the upstream answered (success)."""
    failure = classify(PermanentError("no such invoice"))
    plan = decide.plan_failure(attempt(breaker=BREAKER), failure, now=NOW)
    assert (plan.countdown, plan.give_up, plan.mark, plan.breaker_outcome) == (
        None,
        None,
        "done",
        "success",
    )
    decision = decide.after_failure(attempt(), plan, record(), rng())
    assert isinstance(decision, decisions.FailNow)
    assert decision.state.history == ("#1 permanent: PermanentError",)


def test_transient_failure_is_retried_after_the_backoff():
    """A transient failure with retries left: retried after the backoff, one retry spent."""
    failure = classify(TransientError("x"))
    options = {"backoff": tenacity.wait_fixed(2)}
    plan = decide.plan_failure(attempt(**options), failure, now=NOW)
    assert (plan.countdown, plan.mark, plan.breaker_outcome) == (2.0, "retried", "failure")
    decision = decide.after_failure(attempt(**options), plan, record(), rng())
    assert isinstance(decision, decisions.Wait)
    assert decision.retry
    assert decision.countdown == 2.0
    assert decision.state.failures == 1
    assert decision.line.startswith("transient: TransientError; attempt 1 of 6")


def test_a_retry_the_broker_refused_gives_up_with_its_ledger():
    """A retry whose message the broker would not take: the task gives up, naming why,
    with the failure in its ledger, counted as the one attempt that ran."""
    failure = classify(TransientError("x"))
    plan = decide.plan_failure(attempt(backoff=tenacity.wait_fixed(2)), failure, now=NOW)
    wait = decide.after_failure(attempt(), plan, record(), rng())
    assert isinstance(wait, decisions.Wait)
    decision = decide.unpublished(attempt(), wait, "OperationalError: NoPermissionError")
    assert decision.reason == (
        "its retry could not be published (OperationalError: NoPermissionError)"
    )
    assert decision.failure == failure
    assert decision.state.attempt == 1
    assert decision.state.history == ("#1 transient: TransientError",)
    assert decision.message.startswith("gave up after 1 attempt(s): its retry could not")


def test_a_deferral_the_broker_refused_gives_up_too():
    """A deferral whose message the broker would not take gives up the same way."""
    wait = decide.after_gate(attempt(limiter=LIMIT), no(Denial.RATE_LIMITED, 0.3), rng())
    assert isinstance(wait, decisions.Wait)
    decision = decide.unpublished(attempt(), wait, "OperationalError")
    assert decision.reason == "its deferral could not be published (OperationalError)"
    assert (decision.failure, decision.state.deferrals) == (None, 0)


def test_a_published_retry_marks_its_attempt_done_and_a_deferral_marks_nothing():
    """Once a retry's message is in the broker its attempt is done (a copy of the old
    message has nothing left to do); a deferral's attempt held no lease to mark."""
    failure = classify(TransientError("x"))
    plan = decide.plan_failure(attempt(backoff=tenacity.wait_fixed(2)), failure, now=NOW)
    retry = decide.after_failure(attempt(), plan, record(), rng())
    deferral = decide.after_gate(attempt(limiter=LIMIT), no(Denial.RATE_LIMITED, 0.3), rng())
    lost = decide.after_gate(attempt(), no(Denial.RETRIED, 0.0), rng())
    assert isinstance(retry, decisions.Wait)
    assert isinstance(deferral, decisions.Wait)
    assert isinstance(lost, decisions.Wait)
    assert decide.mark_after_publication(retry) == "done"
    assert decide.mark_after_publication(lost) == "done"
    assert decide.mark_after_publication(deferral) is None


def test_only_a_first_wait_of_the_attempt_itself_is_stored_as_the_task_state():
    """A deferral or retry is stored as the task's state; a copy's wait and the next leg
    of a split wait are not (the state may be final by the time they are carried out)."""
    deferral = decide.after_gate(attempt(limiter=LIMIT), no(Denial.RATE_LIMITED, 0.3), rng())
    running = decide.after_gate(attempt(), no(Denial.RUNNING, 30.0), rng())
    split = decide.on_wake(attempt(state=AttemptState(not_before=NOW + 60)), NOW)
    assert isinstance(deferral, decisions.Wait)
    assert isinstance(running, decisions.Wait)
    assert isinstance(split, decisions.Wait)
    assert (deferral.stored, running.stored, split.stored) == (True, False, False)


def test_rate_limited_failure_pauses_the_limiter_and_spares_the_breaker():
    """A 429 with Retry-After: the limiter pauses, the breaker is not charged."""
    failure = classify(TransientError("slow down", retry_after=7))
    failure = replace(failure, verdict=Verdict.RATE_LIMITED)
    plan = decide.plan_failure(attempt(), failure, now=NOW)
    assert plan.pause == 7
    assert plan.breaker_outcome == "neutral"
    assert plan.countdown is not None
    assert plan.countdown >= 7


def test_retries_spent_give_up_with_the_history():
    """The last retry spent: GaveUp, its message the history with this failure in it."""
    state = AttemptState(failures=2, history=("#1 transient: a", "#2 transient: b"))
    failure = classify(TransientError("c"))
    plan = decide.plan_failure(attempt(max_retries=2, state=state), failure, now=NOW)
    assert plan.give_up == "retries exhausted (max_retries=2)"
    assert plan.mark == "done"
    decision = decide.after_failure(attempt(max_retries=2, state=state), plan, record(), rng())
    assert isinstance(decision, decisions.GiveUp)
    assert decision.message.splitlines()[1:] == [
        "  #1 transient: a",
        "  #2 transient: b",
        "  #3 transient: TransientError",
    ]


def test_a_deadline_that_leaves_no_room_gives_up():
    """A Retry-After floor past the deadline: give up now."""
    state = AttemptState(started=NOW - 9)
    failure = classify(TransientError("x", retry_after=30))
    plan = decide.plan_failure(attempt(deadline=10.0, state=state), failure, now=NOW)
    assert plan.give_up == "deadline of 10 s leaves no room for another attempt"


def test_a_retry_due_while_the_breaker_is_open_waits_for_half_open():
    """The failure opened the breaker: the retry is moved to its half-open time."""
    failure = classify(TransientError("x"))
    options = {"breaker": BREAKER, "backoff": tenacity.wait_fixed(0.5)}
    plan = decide.plan_failure(attempt(**options), failure, now=NOW)
    opened = record(breaker_state=BreakerState.OPEN, open_until=NOW + 5)
    decision = decide.after_failure(attempt(**options), plan, opened, rng())
    assert isinstance(decision, decisions.Wait)
    assert 5.0 <= decision.countdown <= 5.0 + BREAKER.open_for


# -- properties -------------------------------------------------------------------------

denials = st.sampled_from(
    [
        Denial.BREAKER_OPEN,
        Denial.BREAKER_HALF_OPEN,
        Denial.THROTTLED,
        Denial.RETRY_BUDGET,
        Denial.RATE_LIMITED,
        Denial.CONCURRENCY_FULL,
    ]
)


@given(
    denial=denials,
    wait=st.floats(0.0, 3600.0),
    failures=st.integers(0, 5),
    deferrals=st.integers(0, 50),
    elapsed=st.floats(0.0, 100.0),
    deadline=st.one_of(st.none(), st.floats(0.5, 200.0)),
    seed=st.integers(0, 2**32),
)
def test_a_deferral_never_spends_a_retry_nor_outlives_the_deadline(
    denial, wait, failures, deferrals, elapsed, deadline, seed
):
    """Whatever a gate answers (once a wait in place is spent): a deferral keeps the
    failures, adds one deferral, waits at least 10 ms, and never past the deadline; else
    the task gives up."""
    state = AttemptState(failures=failures, deferrals=deferrals, started=NOW - elapsed)
    subject = attempt(
        breaker=BREAKER, limiter=LIMIT, concurrency=POOL, deadline=deadline, state=state
    )
    answer = no(denial, wait, breaker_state=BreakerState.OPEN, slot=NOW + wait)
    decision = decide.after_gate(subject, answer, random.Random(seed), may_wait_in_place=False)
    remaining = subject.remaining(NOW)
    if remaining is not None and remaining <= 0:
        assert isinstance(decision, decisions.GiveUp)
        return
    if isinstance(decision, decisions.GiveUp):
        assert remaining is not None
        assert "would pass while deferred" in decision.reason
        return
    assert isinstance(decision, decisions.Wait)
    assert decision.countdown >= 0.01
    assert decision.state.failures == failures
    assert decision.state.deferrals == deferrals + 1
    assert remaining is None or decision.countdown < remaining


@given(
    failures=st.integers(0, 12),
    max_retries=st.one_of(st.none(), st.integers(0, 10)),
    verdict=st.sampled_from(list(Verdict)),
    retry_after=st.one_of(st.none(), st.floats(0.0, 120.0)),
)
def test_a_failure_is_retried_only_while_retries_allow(failures, max_retries, verdict, retry_after):
    """Permanent never retries; otherwise a retry exactly while failures < max_retries,
    with a countdown at least the Retry-After floor."""
    state = AttemptState(failures=failures)
    failure = replace(classify(TransientError("x")), verdict=verdict, retry_after=retry_after)
    subject = attempt(max_retries=max_retries, state=state)
    plan = decide.plan_failure(subject, failure, now=NOW)
    decision = decide.after_failure(subject, plan, record(), random.Random(1))
    if verdict is Verdict.PERMANENT:
        assert isinstance(decision, decisions.FailNow)
    elif max_retries is not None and failures >= max_retries:
        assert isinstance(decision, decisions.GiveUp)
        assert decision.state.attempt == failures + 1
    else:
        assert isinstance(decision, decisions.Wait)
        assert decision.state.failures == failures + 1
        assert decision.countdown >= max(retry_after or 0.0, 0.05)


def test_an_expired_task_gives_up_before_asking_the_gates():
    """Past its deadline, a task gives up before the gates (no slot is taken for it)."""
    state = AttemptState(failures=1, started=NOW - 30)
    decision = decide.before_gate(attempt(deadline=10.0, state=state), NOW)
    assert isinstance(decision, decisions.GiveUp)
    assert decision.reason == "deadline of 10 s passed"
    assert decide.before_gate(attempt(deadline=10.0, state=state), NOW - 25) is None
    assert decide.before_gate(attempt(), NOW) is None


def test_a_copy_of_a_running_attempt_looks_again_sooner_than_the_lease():
    """A lease of an hour (the visibility timeout): the copy looks again in 10 s, then
    20 s, 40 s...: a holder that ends soon is seen soon, one that died costs few looks."""
    state = AttemptState()
    waits = []
    for _ in range(4):
        decision = decide.after_gate(attempt(state=state), no(Denial.RUNNING, 3600.0), rng())
        assert isinstance(decision, decisions.Wait)
        waits.append(decision.countdown - decide.REPUBLISH)
        state = decision.state
    assert waits == pytest.approx([10.0, 20.0, 40.0, 80.0])


def test_a_second_publication_leaves_a_retried_attempt_alone():
    """A copy of a message published twice (a double release), finding its attempt failed
    and retried, is ignored: the first copy published the retry."""
    decision = decide.after_gate(
        attempt(), no(Denial.RETRIED, 0.0), rng(), republish_lost_retry=False
    )
    assert isinstance(decision, decisions.Duplicate)
