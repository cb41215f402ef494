"""celery_resilience.testing used directly: steps, the clock, the records and their asserts."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from celery import Celery

from celery_resilience import (
    CircuitBreaker,
    GaveUp,
    PermanentError,
    RateLimit,
    TransientError,
    resilient_task,
    testing,
)
from celery_resilience.integration.eager import EAGER_ATTEMPT_LIMIT, eager_gates
from celery_resilience.testing import FROZEN_AT, Attempts, FakeClock, eager_app

PAYMENTS = CircuitBreaker("payments", minimum_calls=2, failure_rate=0.5, open_for=30.0)


def _task(app: Celery, name: str, failures: list[BaseException], **options: Any) -> Any:
    @resilient_task(app=app, bind=True, name=name, shared=False, **options)
    def task(self: Any) -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    return task


def test_steps_show_a_breaker_opened_by_one_task_deferring_another(
    resilience_app, resilience_attempts, resilience_clock
):
    """Two failures of ``down`` open the breaker; ``charge`` is deferred by it until the
    clock passes the open time, then runs as the probe and succeeds."""
    down = _task(resilience_app, "t.down", [TransientError("503")] * 2, breaker=PAYMENTS)
    charge = _task(resilience_app, "t.charge", [], breaker=PAYMENTS)
    failing = resilience_attempts.step(down)
    assert failing.next().decision == "retried"
    assert failing.next().decision == "retried"

    steps = resilience_attempts.step(charge)
    first = steps.next()
    assert (first.decision, first.gate, first.name) == ("deferred", "breaker", "payments")
    assert first.reason is not None
    assert first.reason.startswith("breaker 'payments' open")
    assert first.countdown is not None
    assert first.countdown >= 30.0 - 1e-6
    assert not steps.done

    second = steps.next()  # the clock moved on by the deferral: half-open, a probe
    assert second.decision == "succeeded"
    assert (steps.done, steps.result, steps.error) == (True, "ok", None)
    resilience_attempts.of(charge).assert_deferred_by("breaker", "payments", times=1)
    resilience_attempts.of(charge).assert_retried(0)
    assert resilience_clock.skipped >= 30.0


def test_a_step_after_the_end_says_what_happened(resilience_app, resilience_attempts):
    task = _task(resilience_app, "t.perm", [PermanentError("no such invoice")])
    steps = resilience_attempts.step(task)
    record = steps.next()
    assert (record.decision, record.verdict) == ("failed", "permanent")
    assert isinstance(steps.error, PermanentError)
    with pytest.raises(AssertionError, match=r"has ended:\n  #1 failed: PermanentError"):
        steps.next()


def test_run_to_end_gives_up_with_the_history(resilience_app, resilience_attempts):
    task = _task(resilience_app, "t.always", [TransientError("x")] * 5, max_retries=2)
    records = resilience_attempts.step(task).run_to_end()
    records.assert_decisions("retried", "retried", "gave_up")
    records.assert_gave_up("retries")
    assert records[-1].history == tuple(f"#{n} transient: TransientError" for n in (1, 2, 3))


def test_the_clock_stands_still_until_moved(resilience_app, resilience_clock):
    assert resilience_clock.now() == FROZEN_AT
    resilience_clock.advance(12.5)
    assert resilience_clock.now() == FROZEN_AT + 12.5
    with pytest.raises(ValueError, match="does not go back"):
        resilience_clock.advance(-1)


def test_a_rate_limit_defers_the_second_call_by_the_exact_wait(resilience_app, resilience_attempts):
    """1/s: the second call at the same instant waits one second, no jitter."""
    limited = _task(resilience_app, "t.limited", [], limiter=RateLimit("crm", "1/s"))
    limited.delay()
    limited.delay()
    resilience_attempts.assert_decisions("succeeded", "deferred", "succeeded")
    resilience_attempts.assert_deferred_by("rate_limit", "crm", times=1)
    assert resilience_attempts.countdowns == [pytest.approx(1.0)]


def test_eager_app_puts_everything_back():
    app = Celery("own", set_as_current=False)
    before_gates = eager_gates(app)
    random.seed(99)
    before_random = random.getstate()
    with eager_app(app, seed=3, propagate=False):
        assert app.conf.task_always_eager
        assert not app.conf.task_eager_propagates
        assert eager_gates(app) is not before_gates
        assert FakeClock(app).now() == FROZEN_AT
    assert not app.conf.task_always_eager
    assert eager_gates(app) is before_gates
    assert random.getstate() == before_random
    app.close()


def _story(resilience_app: Celery, attempts: Attempts) -> Any:
    task = _task(resilience_app, "t.story", [TransientError("a")])
    task.delay()
    return attempts.of(task)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda a: a.assert_decisions("succeeded"), "expected decisions succeeded, but"),
        (lambda a: a.assert_retried(2), "expected 2 retries then succeeded"),
        (lambda a: a.assert_deferred_by("breaker", "crm"), "expected a deferral by breaker 'crm'"),
        (lambda a: a.assert_gave_up(), "expected to give up"),
        (lambda a: a.assert_ledger("deferred: "), r"ledger lines containing\n  \.\.\.deferred"),
    ],
)
def test_each_assertion_fails_with_the_attempts_listed(
    resilience_app, resilience_attempts, check, message
):
    story = _story(resilience_app, resilience_attempts)
    with pytest.raises(AssertionError, match=message) as caught:
        check(story)
    assert "#1 retried: transient: TransientError; attempt 1 of 6" in str(caught.value)
    assert str(caught.value).endswith("#2 succeeded")


def test_the_records_pass_when_the_story_matches(resilience_app, resilience_attempts):
    story = _story(resilience_app, resilience_attempts)
    story.assert_decisions("retried", "succeeded")
    story.assert_retried(1)
    story.assert_ledger("transient: TransientError; attempt 1 of 6; retry in ")
    assert story.of("t.story").decisions == ["retried", "succeeded"]
    with pytest.raises(TypeError):
        story.of(3)


def test_an_unbounded_task_stepped_stops_at_the_eager_limit(resilience_app, resilience_attempts):
    task = _task(resilience_app, "t.forever", [TransientError("x")] * 200, max_retries=None)
    steps = resilience_attempts.step(task)
    records = steps.run_to_end()
    assert len(records) == EAGER_ATTEMPT_LIMIT
    assert records.decisions[-1] == "gave_up"
    assert isinstance(steps.error, GaveUp)
    assert "eager mode stops after 100" in str(steps.error)


def test_a_fallback_answer_is_recorded_without_a_decision(resilience_app, resilience_attempts):
    """No signal tells a fallback's answer: the record says so with ``decision=None``."""
    breaker = CircuitBreaker("fb", minimum_calls=1, failure_rate=0.5)
    down = _task(resilience_app, "t.fb.down", [TransientError("x")], breaker=breaker)
    resilience_attempts.step(down).next()
    cached = _task(resilience_app, "t.fb", [], breaker=breaker, on_open=lambda: "cached")
    assert cached.delay().get() == "cached"
    resilience_attempts.of(cached).assert_decisions(None)


def test_the_package_lists_its_public_names():
    public = {
        name
        for name, value in vars(testing).items()
        if name[0].isalpha() and not isinstance(value, ModuleType) and name != "annotations"
    }
    assert sorted(testing.__all__) == sorted(public)


def test_a_recorder_listens_only_inside_its_block(resilience_app):
    task = _task(resilience_app, "t.listen", [])
    attempts = Attempts()
    with attempts.recording():
        task.delay()
    task.delay()
    attempts.assert_decisions("succeeded")
