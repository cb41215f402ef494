"""The time limit an attempt runs under: the message's, else the task's, else the app's;
the longest of hard and soft."""

from __future__ import annotations

from celery import Celery
from celery.app.task import Context

from celery_resilience import resilient_task
from celery_resilience.integration.worker import time_limit_of


def _app() -> Celery:
    app = Celery("limits", broker="memory://", set_as_current=False)
    app.conf.task_time_limit = 30
    app.conf.task_soft_time_limit = 20
    return app


def test_the_message_then_the_task_then_the_app_decide():
    app = _app()

    @resilient_task(app=app, name="limits.plain")
    def plain() -> None:
        """No limits of its own."""

    @resilient_task(app=app, name="limits.own", time_limit=12, soft_time_limit=50)
    def own() -> None:
        """Limits of its own."""

    assert time_limit_of(plain, Context(timelimit=(None, None))) == 30.0
    assert time_limit_of(own, Context(timelimit=(None, None))) == 50.0
    assert time_limit_of(own, Context(timelimit=(5, 4))) == 5.0
    assert time_limit_of(plain, Context(timelimit=None)) == 30.0


def test_limits_read_once_are_the_apps_and_none_is_none():
    app = Celery("limits", broker="memory://", set_as_current=False)

    @resilient_task(app=app, name="limits.read")
    def read() -> None:
        """No limits of its own."""

    request = Context(timelimit=(None, None))
    assert time_limit_of(read, request) is None
    assert time_limit_of(read, request, (None, None)) is None
    assert time_limit_of(read, request, (30, 20)) == 30.0
    assert time_limit_of(read, request, (None, 7.5)) == 7.5
