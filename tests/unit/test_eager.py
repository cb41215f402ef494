"""Eager mode (``task_always_eager``): retries run at once, in the call, without Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Retry
from tenacity import wait_fixed

from celery_resilience import GaveUp, PermanentError, TransientError, resilient_task, signals
from celery_resilience.core import headers
from celery_resilience.integration.eager import eager_gates
from celery_resilience.observability.tracing import current_attempt
from celery_resilience.testing import FROZEN_AT, Attempts, eager_app


@pytest.fixture(params=[True, False], ids=["propagates", "no-propagation"])
def app(request: pytest.FixtureRequest) -> Iterator[Celery]:
    """An eager app with no broker and no Redis anywhere, its clock frozen, jitter seeded."""
    app = Celery("eager", broker="memory://", backend="cache+memory://", set_as_current=False)
    with eager_app(app, propagate=request.param):
        yield app
    app.close()


def _flaky(app: Celery, failures: list[BaseException], **options: Any) -> Any:
    calls: list[int] = []

    @resilient_task(app=app, bind=True, name=f"eager.flaky.{id(failures)}", **options)
    def flaky(self: Any) -> int:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return len(calls)

    flaky.calls = calls
    return flaky


def test_transient_failures_are_retried_in_the_same_call(app, resilience_attempts: Attempts):
    """Two transient failures then success: one call returns the result, 3 attempts made."""
    task = _flaky(app, [TransientError("a"), ConnectionResetError("b")])
    result = task.delay()
    assert result.get() == 3
    assert result.state == "SUCCESS"
    resilience_attempts.assert_retried(2, then="succeeded")


def test_exhausted_retries_give_up(app, resilience_attempts: Attempts):
    """Always transient with max_retries=2: GaveUp after 3 attempts, with its history."""
    task = _flaky(app, [TransientError("x")] * 10, max_retries=2)
    if app.conf.task_eager_propagates:
        with pytest.raises(GaveUp, match="gave up after 3 attempt"):
            task.delay()
    else:
        result = task.delay()
        assert result.state == "FAILURE"
        assert isinstance(result.result, GaveUp)
        assert "#3 transient" in str(result.result)
    assert len(task.calls) == 3
    resilience_attempts.assert_decisions("retried", "retried", "gave_up")


def test_permanent_failure_is_not_retried(app):
    """A permanent failure fails the one call, with its own exception."""
    task = _flaky(app, [PermanentError("no such invoice")])
    if app.conf.task_eager_propagates:
        with pytest.raises(PermanentError):
            task.delay()
    else:
        assert task.delay().state == "FAILURE"
    assert len(task.calls) == 1


def test_signals_report_each_attempt(app):
    """attempt_started, attempt_failed, retry_scheduled and attempt_succeeded are sent."""
    task = _flaky(app, [TransientError("a")])
    seen: list[tuple[str, int]] = []

    def receiver(name: str):
        def record(sender: Any = None, attempt: int = 0, **_: Any) -> None:
            if sender is task or getattr(sender, "name", None) == task.name:
                seen.append((name, attempt))

        return record

    receivers = {
        sig: receiver(name)
        for name, sig in [
            ("started", signals.attempt_started),
            ("failed", signals.attempt_failed),
            ("retry", signals.retry_scheduled),
            ("succeeded", signals.attempt_succeeded),
        ]
    }
    for sig, fn in receivers.items():
        sig.connect(fn, weak=False)
    try:
        task.delay()
    finally:
        for sig, fn in receivers.items():
            sig.disconnect(fn)
    assert seen == [("started", 1), ("failed", 1), ("retry", 1), ("started", 2), ("succeeded", 2)]


def test_direct_call_runs_the_body_once(app):
    """Calling the task like a function is a plain call: no retries, the exception as is."""
    task = _flaky(app, [TransientError("once")])
    with pytest.raises(TransientError):
        task()
    assert task() == 2


# -- eager mode makes the worker's decisions ---------------------------------------------


def _final(app: Celery, task: Any) -> BaseException:
    """Run ``task`` eagerly and return the exception it ended with."""
    if app.conf.task_eager_propagates:
        with pytest.raises(Exception) as caught:
            task.delay()
        return caught.value
    result = task.delay()
    assert result.state == "FAILURE"
    assert isinstance(result.result, BaseException)
    return result.result


def test_deadline_is_honoured_on_the_skipped_countdowns(app):
    """deadline=0.5 with an always-failing task: it gives up once the countdowns it
    skipped add up to the deadline, long before max_retries."""
    task = _flaky(
        app, [TransientError("x")] * 50, max_retries=40, deadline=0.5, backoff=wait_fixed(0.2)
    )
    exc = _final(app, task)
    assert isinstance(exc, GaveUp)
    assert "deadline of 0.5 s" in str(exc)
    assert len(task.calls) <= 4


def test_gave_up_is_not_chained_to_the_last_failure(app):
    """GaveUp is raised ``from None``, as on a worker: the last failure's text stays out."""
    task = _flaky(app, [TransientError("https://x.example/?api_key=k3y")] * 3, max_retries=1)
    exc = _final(app, task)
    assert isinstance(exc, GaveUp)
    assert exc.__cause__ is None
    assert exc.__suppress_context__


def test_permanent_failure_message_is_redacted(app):
    """A permanent failure's message loses its secrets, as on a worker."""
    task = _flaky(app, [PermanentError("GET https://x.example/v1?api_key=k3y failed")])
    exc = _final(app, task)
    assert isinstance(exc, PermanentError)
    assert "k3y" not in str(exc)


def test_retry_after_is_the_floor_of_the_countdown(app, resilience_attempts: Attempts):
    """A Retry-After of 30 s: the retry's countdown is at least 30 s (skipped, not waited)."""
    task = _flaky(app, [TransientError("busy", retry_after=30)])
    assert task.delay().get() == 2
    countdowns = resilience_attempts.of(task).countdowns
    assert len(countdowns) == 1
    assert countdowns[0] >= 30


def test_a_failure_is_kept_as_a_dead_letter(app):
    """A task that gives up eagerly leaves a dead letter, as on a worker."""
    task = _flaky(app, [PermanentError("no")])
    _final(app, task)
    letters = [letter for letter in eager_gates(app).dead_letters if letter.task_name == task.name]
    assert [letter.reason for letter in letters] == ["permanent failure"]


def test_a_retry_raised_by_the_body_is_not_a_failure(app):
    """``self.retry()`` from the body is Celery's own re-queue, not a transient failure:
    no attempt_failed; Celery runs the task again (or, propagating, raises its Retry)."""
    calls: list[int] = []
    failed: list[Any] = []

    @resilient_task(app=app, bind=True, name=f"eager.self_retry.{id(calls)}")
    def again(self: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise self.retry(countdown=1)
        return len(calls)

    def note(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == again.name:
            failed.append(kwargs)

    signals.attempt_failed.connect(note, weak=False)
    try:
        if app.conf.task_eager_propagates:
            # Celery's own eager rule: with propagation, the Retry reaches the caller
            with pytest.raises(Retry):
                again.delay()
        else:
            assert again.delay().get() == 2
    finally:
        signals.attempt_failed.disconnect(note)
    assert failed == []
    assert len(calls) == (1 if app.conf.task_eager_propagates else 2)


def test_an_unsampled_trace_stays_unsampled_in_the_attempt(app):
    """The attempt keeps the sampled flag of the trace it continues: its outbound calls
    say "not sampled" when the message did."""
    seen: list[str] = []

    @resilient_task(app=app, name="eager.traced")
    def traced() -> None:
        info = current_attempt()
        assert info is not None
        seen.append(info.traceparent())

    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    for flags in ("00", "01"):
        traced.apply(headers={"traceparent": f"00-{trace_id}-{span_id}-{flags}"}).get()
    assert [value[:35] for value in seen] == [f"00-{trace_id}"] * 2
    assert [value[-3:] for value in seen] == ["-00", "-01"]


def test_a_message_past_its_deadline_gives_up_before_its_body(app):
    """An attempt of a task without gates whose deadline passed before it came gives up
    at once: its body does not run."""
    task = _flaky(app, [], deadline=10.0)
    state = json.dumps({"v": 1, "f": 1, "d": 0, "t0": FROZEN_AT - 60})
    if app.conf.task_eager_propagates:
        with pytest.raises(GaveUp, match="deadline of 10 s passed"):
            task.apply(headers={headers.STATE: state})
    else:
        result = task.apply(headers={headers.STATE: state})
        assert isinstance(result.result, GaveUp)
        assert "deadline of 10 s passed" in str(result.result)
    assert task.calls == []
