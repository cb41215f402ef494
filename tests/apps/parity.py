"""One table of scenarios, run by a worker and in eager mode: the parity test's tasks.

Every signal of celery-resilience is recorded as a short event (its name, the attempt,
and the verdict, gate or reason where there is one): on a worker, appended to a Redis list
per task ID on the result backend's Redis; in eager mode, to :data:`EVENTS` in memory.
The tasks call the test upstream at ``UPSTREAM_URL`` + the path they are given.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import redis
import tenacity

from celery_resilience import CircuitBreaker, resilient_task, signals
from tests.helpers.celery_apps import ENV_BACKEND, ENV_UPSTREAM, app_from_env
from tests.helpers.parity import outcome

if os.environ.get("RESILIENCE_PARITY_EAGER") == "1":
    from celery import Celery

    app = Celery("parity", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=False)
else:
    app = app_from_env("parity")
    app.conf.update(
        resilience_backend_url=os.environ.get("RESILIENCE_TEST_STATE") or None,
        resilience_key_prefix=os.environ.get("RESILIENCE_TEST_PREFIX") or "resilience",
    )

#: Events recorded in this process when there is no Redis to send them to.
EVENTS: dict[str, list[list[Any]]] = defaultdict(list)
_clients: dict[int, redis.Redis] = {}
#: A quick, fixed backoff: the scenarios' decisions, not their timing, are compared.
QUICK = tenacity.wait_fixed(0.2)
#: A breaker that two failures open for five seconds.
TRIPPY = CircuitBreaker("parity", failure_rate=0.5, minimum_calls=2, window=30.0, open_for=5.0)


def _note(task_id: Any, *event: Any) -> None:
    key = f"parity:{task_id}"
    backend = os.environ.get(ENV_BACKEND)
    if os.environ.get("RESILIENCE_PARITY_EAGER") == "1" or not backend:
        EVENTS[key].append(list(event))
        return
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(backend)
    client.rpush(key, json.dumps(list(event)))


@signals.attempt_started.connect
def _started(task_id: Any = None, attempt: int = 0, **_: Any) -> None:
    _note(task_id, "started", attempt)


@signals.attempt_succeeded.connect
def _succeeded(task_id: Any = None, attempt: int = 0, **_: Any) -> None:
    _note(task_id, "succeeded", attempt)


@signals.attempt_failed.connect
def _failed(task_id: Any = None, attempt: int = 0, verdict: Any = None, **_: Any) -> None:
    _note(task_id, "failed", attempt, verdict.value)


@signals.retry_scheduled.connect
def _retry(task_id: Any = None, attempt: int = 0, verdict: Any = None, **_: Any) -> None:
    _note(task_id, "retry", attempt, verdict.value)


@signals.deferred.connect
def _deferred(task_id: Any = None, attempt: int = 0, gate: Any = None, **_: Any) -> None:
    _note(task_id, "deferred", attempt, gate)


@signals.gave_up.connect
def _gave_up(task_id: Any = None, attempt: int = 0, reason: str = "", **_: Any) -> None:
    _note(task_id, "gave_up", attempt, reason)


def _get(task: Any, path: str) -> int:
    resp = task.http.get(os.environ[ENV_UPSTREAM] + path, timeout=5)
    resp.raise_for_status()
    return resp.status_code


@resilient_task(app=app, bind=True, name="parity.call", backoff=QUICK, max_retries=2)
def call(self: Any, path: str) -> int:
    """GET the upstream; two retries."""
    return _get(self, path)


@resilient_task(app=app, bind=True, name="parity.deadline", backoff=QUICK, deadline=5.0)
def deadline(self: Any, path: str) -> int:
    """GET the upstream with a 5 s deadline."""
    return _get(self, path)


@resilient_task(
    app=app, bind=True, name="parity.trip", backoff=QUICK, max_retries=0, breaker=TRIPPY
)
def trip(self: Any, path: str) -> int:
    """GET the upstream behind the breaker; no retry (its failures open the breaker)."""
    return _get(self, path)


@resilient_task(app=app, bind=True, name="parity.guarded", backoff=QUICK, breaker=TRIPPY)
def guarded(self: Any, path: str) -> int:
    """GET the upstream behind the breaker."""
    return _get(self, path)


@resilient_task(
    app=app, bind=True, name="parity.refused", backoff=QUICK, breaker=TRIPPY, on_open="fail"
)
def refused(self: Any, path: str) -> int:
    """GET the upstream behind the breaker, failing at once while it is open."""
    return _get(self, path)


@resilient_task(app=app, bind=True, name="parity.self_retry", backoff=QUICK)
def self_retry(self: Any, path: str) -> int:
    """GET the upstream; on a 503 the body re-queues itself with ``self.retry``."""
    resp = self.http.get(os.environ[ENV_UPSTREAM] + path, timeout=5)
    if resp.status_code == 503:
        raise self.retry(countdown=0.2)
    return int(resp.status_code)


def main() -> None:
    """Eager side: read ``[[task name, path], ...]`` (JSON, stdin), run each eagerly in
    order, print each outcome with its events (JSON, one line)."""
    import sys  # noqa: PLC0415

    done = []
    for name, path in json.loads(sys.stdin.read()):
        result = app.tasks[name].apply_async(args=[path])
        entry = outcome(result.id, result.state, result.result, result.traceback)
        entry["events"] = EVENTS.get(f"parity:{result.id}", [])
        done.append(entry)
    print(json.dumps(done))
