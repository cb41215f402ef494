"""Deadlines reach the upstream: the budget left, the timeouts cut to it, the header."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import CircuitBreaker, GaveUp, TransientError, resilient_task
from celery_resilience.core import decide, decisions
from celery_resilience.core.budget import (
    MIN_CALL_BUDGET,
    budget_header_value,
    remaining_budget,
    shrink_timeout,
)
from celery_resilience.core.classify import Verdict, classify
from celery_resilience.core.errors import DeadlineSpent, ResilienceConfigError, deadline_spent
from celery_resilience.core.gates import RecordAnswer
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.options import TaskOptions
from celery_resilience.integration.budget import Budget, bind_budget, current_budget
from celery_resilience.integration.eager import eager_gates
from celery_resilience.integration.http import DEFAULT_TIMEOUT, ResilientSession
from celery_resilience.integration.settings import deadline_header
from celery_resilience.testing import Attempts, FakeClock, eager_app
from tests.unit.test_http import Recorder, RecordingAdapter, server  # noqa: F401 - fixture

seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
part = st.none() | st.floats(min_value=0.001, max_value=1e4, allow_nan=False)
timeouts = st.none() | part.filter(lambda p: p is not None) | st.tuples(part, part)


def _parts(timeout: Any) -> list[float | None]:
    return list(timeout) if isinstance(timeout, tuple) else [timeout]


# -- the pure functions ----------------------------------------------------------------


@given(deadline=seconds, started=seconds, elapsed=seconds)
def test_remaining_is_what_the_deadline_leaves(deadline, started, elapsed):
    """Never negative, never more than the deadline, and exactly deadline - elapsed."""
    left = remaining_budget(deadline, started, started + elapsed)
    assert left is not None
    assert 0.0 <= left <= deadline
    assert left == pytest.approx(max(deadline - elapsed, 0.0), abs=1e-6)


def test_no_deadline_no_budget():
    """No deadline (or no first attempt yet): None, nothing to cut."""
    assert remaining_budget(None, 1.0, 5.0) is None
    assert remaining_budget(10.0, None, 5.0) is None


@given(timeout=timeouts, left=seconds)
def test_timeout_sent_never_above_what_is_left_nor_the_callers(timeout, left):
    """Each part is at most what is left, and at most the caller's own (when it set one)."""
    shrunk = shrink_timeout(timeout, left)
    assert isinstance(shrunk, tuple) == isinstance(timeout, tuple)
    for given_part, sent in zip(_parts(timeout), _parts(shrunk), strict=True):
        assert sent is not None
        assert sent <= left
        if given_part is not None:
            assert sent <= given_part
            assert sent == min(given_part, left)


@given(left=st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_header_value_never_promises_more_than_is_left(left):
    """A decimal with three places, rounded down."""
    value = budget_header_value(left)
    whole, millis = value.split(".")
    assert whole.isdigit()
    assert len(millis) == 3
    assert millis.isdigit()
    assert float(value) <= left + 1e-9
    assert left - float(value) < 0.001 + 1e-9 * left


def test_deadline_spent_is_found_through_explicit_causes():
    """A wrapper raised from DeadlineSpent still counts; an unrelated error does not."""
    outer = RuntimeError("wrapped")
    outer.__cause__ = DeadlineSpent("x")
    assert deadline_spent(outer)
    assert not deadline_spent(TimeoutError())
    assert not deadline_spent(None)


def test_deadline_spent_is_not_permanent_whatever_the_task_says():
    """Rule 1: the session's own refusal beats give_up_on and the task's classifier."""
    failure = classify(DeadlineSpent(), give_up_on=(Exception,), classifier=lambda e: None)
    assert failure.verdict.value == "transient"


@pytest.mark.parametrize("name", ["X-Request-Timeout", "Request-Timeout", "x-budget"])
def test_header_setting_accepts_header_names(name):
    assert deadline_header({"resilience_deadline_header": name}) == name


def test_header_setting_default_is_none():
    assert deadline_header({}) is None


@pytest.mark.parametrize(
    "value", ["", "X Timeout", "X-T:", "Authorization", "traceparent", 5, "é", "x" * 65]
)
def test_header_setting_rejects_what_is_not_a_free_header_name(value):
    with pytest.raises(ResilienceConfigError, match="resilience_deadline_header"):
        deadline_header({"resilience_deadline_header": value})


# -- the session -------------------------------------------------------------------------


@pytest.fixture
def session() -> Iterator[ResilientSession]:
    with ResilientSession() as s:
        yield s


def _budget(left: float, header: str | None = None) -> Budget:
    return Budget(deadline=10.0, started=100.0, clock=lambda: 110.0 - left, header=header)


def test_session_cuts_both_timeouts_to_what_is_left(session):
    recording = RecordingAdapter()
    session.mount("http://", recording)
    with bind_budget(_budget(2.0)):
        session.get("http://upstream.invalid/")
        session.get("http://upstream.invalid/", timeout=(0.5, 60))
        session.get("http://upstream.invalid/", timeout=1.5)
    session.get("http://upstream.invalid/")
    assert recording.timeouts == [(2.0, 2.0), (0.5, 2.0), 1.5, DEFAULT_TIMEOUT]


def test_one_budget_binding_is_entered_once():
    """A second entry of the same binding is refused; the first still unbinds on exit."""
    budget = _budget(2.0)
    binding = bind_budget(budget)
    with binding:
        with pytest.raises(RuntimeError, match="entered once"), binding:
            pass
        assert current_budget() is budget
    assert current_budget() is None


@given(
    timeout=timeouts,
    left=st.floats(min_value=MIN_CALL_BUDGET, max_value=1e5, allow_nan=False),
)
def test_session_never_sends_more_than_is_left_nor_than_asked(timeout, left):
    """Through the session: every part sent is at most what is left, and at most the
    caller's own part (or the session's default where the caller gave none)."""
    recording = RecordingAdapter()
    with ResilientSession() as own:
        own.mount("http://", recording)
        with bind_budget(Budget(deadline=left, started=0.0, clock=lambda: 0.0)):
            own.get("http://upstream.invalid/", timeout=timeout)
    (sent,) = recording.timeouts
    asked = DEFAULT_TIMEOUT if timeout is None else timeout
    for asked_part, sent_part in zip(_parts(asked), _parts(sent), strict=True):
        assert sent_part is not None
        assert sent_part <= left
        if asked_part is not None:
            assert sent_part <= asked_part


def test_session_sends_the_budget_header_only_when_named(server: Recorder, session):  # noqa: F811
    with bind_budget(_budget(2.0, header="X-Request-Timeout")):
        session.get(server.url)
    with bind_budget(_budget(2.0)):
        session.get(server.url)
    assert server.headers(0)["x-request-timeout"] == "2.000"
    assert "x-request-timeout" not in server.headers(1)


def test_session_keeps_the_callers_budget_header(server: Recorder, session):  # noqa: F811
    with bind_budget(_budget(2.0, header="X-Request-Timeout")):
        session.get(server.url, headers={"X-Request-Timeout": "1"})
    assert server.headers()["x-request-timeout"] == "1"


@pytest.mark.parametrize("left", [0.0, MIN_CALL_BUDGET / 2])
def test_session_starts_no_call_without_time(server: Recorder, session, left):  # noqa: F811
    with bind_budget(_budget(left)), pytest.raises(DeadlineSpent, match="call not started"):
        session.get(server.url)
    assert server.seen == []


# -- eager mode: the eager clock -----------------------------------------------------


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("budget", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.resilience_deadline_header = "X-Request-Timeout"
    with eager_app(app, propagate=True):
        yield app
    app.close()


def test_eager_task_with_two_seconds_left_sends_at_most_two(app, server: Recorder):  # noqa: F811
    """The body moves the eager clock 8 s into a 10 s deadline: its call gets 2 s."""

    @resilient_task(app=app, bind=True, name="budget.two", deadline=10.0)
    def two(self: Any) -> str:
        FakeClock(app).advance(8.0)
        recording = RecordingAdapter()
        with ResilientSession() as own:
            own.mount("http://", recording)
            own.get("http://upstream.invalid/", timeout=30)
        self.http.get(server.url, timeout=(5, 30))
        return repr(recording.timeouts)

    assert two.delay().get() == "[2.0]"
    assert server.headers()["x-request-timeout"] == "2.000"


def test_eager_task_out_of_time_gives_up_without_calling(
    app,
    server: Recorder,  # noqa: F811
    resilience_attempts: Attempts,
):
    """No time left: the call is not sent, the task gives up at once, with a dead letter."""

    @resilient_task(app=app, bind=True, name="budget.late", deadline=10.0, max_retries=5)
    def late(self: Any) -> None:
        FakeClock(app).advance(9.95)
        self.http.post(server.url, json={})

    with pytest.raises(GaveUp, match="deadline of 10 s passed"):
        late.delay()
    assert server.seen == []
    resilience_attempts.assert_decisions("gave_up")
    letter = eager_gates(app).dead_letters[-1]
    assert letter.verdict == "deadline"


def test_eager_retry_sees_less_time_left(app, server: Recorder):  # noqa: F811
    """A retry after Retry-After 7 s of a 10 s deadline sends at most 3 s."""
    attempts: list[int] = []

    @resilient_task(app=app, bind=True, name="budget.retry", deadline=10.0)
    def retried(self: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise TransientError("not yet", retry_after=7.0)
        self.http.get(server.url)

    retried.delay()
    assert len(attempts) == 2
    assert 0.0 < float(server.headers()["x-request-timeout"]) <= 3.0


# -- the decision ------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", [None, Verdict.PERMANENT, Verdict.TRANSIENT])
def test_a_refused_call_gives_up_by_the_deadline_without_charging_the_breaker(verdict):
    """Whatever the task's classifier says of it (here of a wrapper raised from it), a
    refused call is not retried (retries are left) and is neutral for the breaker."""
    exc = RuntimeError("wrapped")
    exc.__cause__ = DeadlineSpent("0.050 s left")
    options = TaskOptions(
        deadline=10.0, max_retries=5, breaker=CircuitBreaker("pay"), classifier=lambda e: verdict
    )
    state = AttemptState(started=1000.0)
    attempt = decisions.Attempt(options=options, state=state, trace_id="4" * 32)
    failure = classify(exc, classifier=options.classifier)
    plan = decide.plan_failure(attempt, failure, now=1009.95, exc=exc)
    assert (plan.countdown, plan.mark, plan.breaker_outcome) == (None, "done", "neutral")
    assert plan.give_up == "deadline of 10 s passed (0.050 s left, too little for a call)"
    decision = decide.after_failure(attempt, plan, RecordAnswer(now=1009.95), random.Random(1))
    assert isinstance(decision, decisions.GiveUp)
    assert decision.failure is None
    assert decision.state.history[-1].startswith("#1 deadline: ")
