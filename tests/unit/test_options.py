"""Task options are checked when the task is declared, naming the option and the task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tenacity
from celery import Celery, Task

from celery_resilience import CircuitBreaker, RateLimit, ResilientTask, resilient_task


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("opts", broker="memory://", set_as_current=False)
    yield app
    app.close()


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": "3"}, TypeError, "max_retries"),
        ({"deadline": 0}, ValueError, "deadline"),
        ({"deadline": -5.0}, ValueError, "deadline"),
        ({"deadline": "soon"}, TypeError, "deadline"),
        ({"backoff": 5}, TypeError, "backoff"),
        ({"backoff": "exponential"}, TypeError, "backoff"),
        ({"classifier": 3}, TypeError, "classifier"),
        ({"retry_on": ValueError()}, TypeError, "retry_on"),
        ({"give_up_on": (KeyError, "x")}, TypeError, "give_up_on"),
        ({"breaker": "payments"}, TypeError, "breaker"),
        ({"limiter": "10/s"}, TypeError, "limiter"),
        ({"concurrency": 3}, TypeError, "concurrency"),
    ],
)
def test_bad_option_fails_at_declaration(app, options, error, words):
    """A wrong type or value raises at the decorator, naming the option and the task."""
    with pytest.raises(error, match=words) as info:

        @resilient_task(app=app, name="shop.charge", shared=False, **options)
        def charge() -> None: ...

    assert "shop.charge" in str(info.value)


def test_good_options_are_kept(app):
    """Valid options reach the task's per-attempt options."""
    wait = tenacity.wait_fixed(2)

    @resilient_task(
        app=app,
        name="shop.ok",
        breaker=CircuitBreaker("p"),
        limiter=RateLimit("p", "5/s"),
        max_retries=None,
        deadline=30,
        backoff=wait,
        retry_on=KeyError,
    )
    def ok() -> None: ...

    opts = ok.resilience_options()
    assert opts.breaker == CircuitBreaker("p")
    assert opts.limiter == RateLimit("p", "5/s")
    assert opts.max_retries is None
    assert opts.deadline == 30.0
    assert opts.backoff is wait
    assert opts.retry_on == (KeyError,)


def test_subclass_options_are_checked_at_class_creation():
    """A subclass with a bad attribute fails when the class is created, naming it."""
    with pytest.raises(ValueError, match=r"max_retries.*|.*Bad"):

        class Bad(ResilientTask):
            max_retries = -3


def test_subclass_inherits_and_overrides(app):
    """Options are class attributes; subclasses override them."""

    class Base(ResilientTask):
        breaker = CircuitBreaker("crm")
        max_retries = 2

    class Sync(Base):
        name = "crm.sync"
        max_retries = 7

        def run(self) -> None: ...

    task = app.register_task(Sync())
    opts = task.resilience_options()
    assert opts.breaker == CircuitBreaker("crm")
    assert opts.max_retries == 7


def test_decorator_without_parentheses_is_a_shared_task():
    """``@resilient_task`` alone declares a shared task with the defaults."""

    @resilient_task
    def plain_shared() -> int:
        return 1

    assert plain_shared.resilience_options().max_retries == 5


def test_base_must_be_resilient(app):
    """``base=`` must be ResilientTask or a subclass."""
    with pytest.raises(TypeError, match="base"):
        resilient_task(app=app, base=Task)


def test_celery_autoretry_is_refused(app):
    """autoretry_for would retry behind the flow's back: refused, pointing to retry_on."""
    with pytest.raises(TypeError, match="retry_on"):

        @resilient_task(app=app, name="shop.auto", autoretry_for=(KeyError,))
        def auto() -> None: ...
