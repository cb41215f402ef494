"""The resilient test app, with parking tuned for tests and two tasks that use its API.

Besides the variables of :mod:`tests.apps.resilient`: ``PARK_TEST_POLL`` and
``PARK_TEST_LEASE`` (``resilience_park_poll`` / ``_lease``), ``PARK_TEST_RECORD`` (a Redis
list on the result backend where ``park.record`` notes each run) and
``PARK_TEST_SLOW_PUBLISH`` (seconds this process sleeps before publishing each released
message: a releaser that is slow, so that a test can kill it half way).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery.exceptions import Ignore
from celery.signals import before_task_publish

from celery_resilience.integration.parking import (
    PARKED_HEADER,
    message_for,
    parked_set_for,
    parking_place,
)
from tests.apps.resilient import app
from tests.helpers.celery_apps import ENV_BACKEND

__all__ = ["app", "later", "record"]

app.conf.update(
    resilience_park_after=1.0,
    resilience_park_poll=float(os.environ.get("PARK_TEST_POLL") or 0.2),
    resilience_park_lease=float(os.environ.get("PARK_TEST_LEASE") or 3.0),
)

_clients: dict[int, redis.Redis] = {}


def _backend() -> redis.Redis:
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(os.environ[ENV_BACKEND])
    return client


@before_task_publish.connect
def _slow_release(headers: dict[str, Any] | None = None, **_: Any) -> None:
    delay = float(os.environ.get("PARK_TEST_SLOW_PUBLISH") or 0)
    if delay and headers and headers.get(PARKED_HEADER):
        time.sleep(delay)


def _note(self: Any, tag: str) -> str:
    headers = dict(self.request.as_execution_options().get("headers") or {})
    entry_id = headers.get(PARKED_HEADER)
    first = None
    if entry_id:
        first = parking_place(self.app).parked.first_delivery(entry_id)
    note = {
        "tag": tag,
        "task_id": self.request.id,
        "parked": entry_id,
        "first": first,
        "x_test": headers.get("x-test"),
        "priority": (self.request.delivery_info or {}).get("priority"),
        "at": time.time(),
    }
    _backend().rpush(os.environ["PARK_TEST_RECORD"], json.dumps(note))
    return tag


@app.task(bind=True, name="park.record")
def record(self: Any, tag: str) -> str:
    """Note this run (tag, task ID, headers, priority, whether it is the first delivery of
    its parked entry) in the list ``PARK_TEST_RECORD`` names."""
    return _note(self, tag)


@app.task(bind=True, name="park.later")
def later(self: Any, tag: str, delay: float) -> str:
    """Park itself for ``delay`` seconds (as the attempt path would), then, released, run
    as ``park.record`` does."""
    headers = dict(self.request.as_execution_options().get("headers") or {})
    if headers.get(PARKED_HEADER):
        return _note(self, tag)
    parked = parked_set_for(self.app)
    message = message_for(self, self.request, self.request.args, self.request.kwargs, headers)
    if parked is None or message is None:
        raise RuntimeError("this test app parks in its Redis broker")
    parked.park(
        task_name=self.name, task_id=self.request.id, reason="backoff", delay=delay, message=message
    )
    raise Ignore
