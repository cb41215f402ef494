"""Celery apps configured from environment variables, shared by the test apps and clients.

A worker process learns everything from its environment, so each test can point its
workers at its own broker, result backend, upstream and queue::

    env = app_env(broker=broker_url, backend=backend_url, upstream=upstream.url, queue=queue)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from celery import Celery

if TYPE_CHECKING:
    from tests.helpers.redis_server import RedisServer

ENV_BROKER = "RESILIENCE_TEST_BROKER"
ENV_BACKEND = "RESILIENCE_TEST_BACKEND"
ENV_UPSTREAM = "UPSTREAM_URL"
ENV_QUEUE = "RESILIENCE_TEST_QUEUE"


def make_app(
    main: str, *, broker: str, backend: str | None, queue: str, set_as_current: bool = True
) -> Celery:
    """Return an app on ``broker`` whose tasks go to ``queue``; JSON only, never pickle."""
    app = Celery(main, broker=broker, backend=backend, set_as_current=set_as_current)
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    return app


def app_from_env(main: str) -> Celery:
    """Return an app configured by ``RESILIENCE_TEST_BROKER``, ``_BACKEND`` and ``_QUEUE``."""
    broker = os.environ.get(ENV_BROKER)
    if not broker:
        raise RuntimeError(f"{ENV_BROKER} is not set: the test rig sets it for its workers")
    return make_app(
        main,
        broker=broker,
        backend=os.environ.get(ENV_BACKEND) or None,
        queue=os.environ.get(ENV_QUEUE) or "celery",
    )


def app_env(*, broker: str, backend: str, upstream: str, queue: str) -> dict[str, str]:
    """Return the environment that :func:`app_from_env` reads, for a worker process."""
    return {ENV_BROKER: broker, ENV_BACKEND: backend, ENV_UPSTREAM: upstream, ENV_QUEUE: queue}


def state_app(redis_server: RedisServer, name: str) -> Celery:
    """An app (not current) whose library state lives in ``redis_server``'s db 3, under
    the key prefix ``name``: for tests that drive a process's runtime directly."""
    app = make_app(name, broker=redis_server.url(0), backend=None, queue=name, set_as_current=False)
    app.conf.resilience_backend_url = redis_server.url(3)
    app.conf.resilience_key_prefix = name
    return app
