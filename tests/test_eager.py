"""Eager mode (``task_always_eager``): retries run at once, in the call, without Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_resilience import GaveUp, PermanentError, TransientError, resilient_task, signals


@pytest.fixture(params=[True, False], ids=["propagates", "no-propagation"])
def app(request: pytest.FixtureRequest) -> Iterator[Celery]:
    """An eager app with no broker and no Redis anywhere."""
    app = Celery("eager", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=request.param)
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


def test_transient_failures_are_retried_in_the_same_call(app):
    """Two transient failures then success: one call returns the result, 3 attempts made."""
    task = _flaky(app, [TransientError("a"), ConnectionResetError("b")])
    result = task.delay()
    assert result.get() == 3
    assert result.state == "SUCCESS"


def test_exhausted_retries_give_up(app):
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
