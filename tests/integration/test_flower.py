"""What Flower (a real Flower 2.x, over its HTTP API) shows of resilient tasks and workers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import states

from celery_resilience import CircuitBreaker
from celery_resilience.observability.tracing import parse_traceparent
from example_project.upstream import Upstream
from tests.helpers.flower import FlowerProcess
from tests.helpers.inspection import APP, Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Rig, FlowerProcess]]:
    """One worker sending events (-E) and one Flower watching it, for the module."""
    logs = tmp_path_factory.mktemp("flower")
    with (
        worker_rig(redis_server, upstream_server, logs, extra_args=["-E"]) as rig,
        FlowerProcess(APP, env=rig.env, logfile=logs / "flower.log") as flower,
    ):
        wait_until(
            lambda: rig.worker.nodename in flower.get("/api/workers", refresh=1),
            timeout=20,
            what="flower sees the worker",
        )
        yield rig, flower


def _task(flower: FlowerProcess, task_id: str, state: str) -> dict[str, Any] | None:
    info: dict[str, Any] = flower.get("/api/tasks")
    task = info.get(task_id)
    return task if task is not None and task["state"] == state else None


def _failing(
    rig: tuple[Rig, FlowerProcess], upstream: Upstream, path: str, task: str, state: str
) -> tuple[dict[str, Any], str, str]:
    """Send ``task`` to a path answering 503; return Flower's task in ``state``, the
    upstream's host and the trace ID the calls carried."""
    worker, flower = rig
    upstream.script(path, [], then=503)
    result = worker.client().send_task(task, args=[path])
    info = wait_until(
        lambda: _task(flower, result.id, state), timeout=30, what=f"the task in {state}"
    )
    ctx = parse_traceparent(upstream.requests(path)[0].header("traceparent"))
    assert ctx is not None
    return info, upstream.url.split("//", 1)[1], ctx.trace_id


def test_a_retried_task_shows_its_ledger_line(
    rig: tuple[Rig, FlowerProcess], upstream: Upstream, unique: str
):
    """RETRY in Flower: the exception field reads verdict, cause, attempt k of n, countdown,
    trace ID."""
    task, host, trace_id = _failing(rig, upstream, f"/{unique}", "res.slow_backoff", "RETRY")
    assert task["exception"] == (
        f"transient: HTTP 503 from {host}; attempt 1 of 3; retry in 3.0 s; trace {trace_id}"
    )
    detail = rig[1].get(f"/api/task/info/{task['uuid']}")
    assert detail["exception"] == task["exception"]
    assert detail["retries"] == 1


def test_a_deferred_task_says_why_and_until_when(
    rig: tuple[Rig, FlowerProcess], upstream: Upstream, unique: str
):
    """A task held back by a forced-open breaker shows the reason and when it comes back."""
    worker, flower = rig
    store = worker.store
    store.breaker(CircuitBreaker("upstream"), "open")
    try:
        result = worker.client().send_task("res.guarded", args=[f"/{unique}"])
        task = wait_until(
            lambda: _task(flower, result.id, "RETRY"), timeout=20, what="the task in RETRY"
        )
        assert re.fullmatch(
            r"deferred: breaker 'upstream' forced open; attempt 1 of 9; retry in [0-9.]+ s; "
            r"trace [0-9a-f]{32}",
            task["exception"],
        ), task["exception"]
        detail = wait_until(
            lambda: (d := flower.get(f"/api/task/info/{result.id}"))["eta"] and d,
            timeout=10,
            what="the eta of the deferred task",
        )
        assert detail["state"] == "RETRY"
        assert upstream.count(f"/{unique}") == 0
    finally:
        store.breaker(CircuitBreaker("upstream"), "reset")


def test_a_task_that_gave_up_carries_its_history(
    rig: tuple[Rig, FlowerProcess], upstream: Upstream, unique: str
):
    """FAILURE in Flower: the exception holds the reason and one line per attempt."""
    task, host, trace_id = _failing(rig, upstream, f"/{unique}", "res.call3", "FAILURE")
    assert task["exception"].startswith(
        f"GaveUp('gave up after 4 attempt(s): retries exhausted (max_retries=3); trace {trace_id}"
    )
    for attempt in range(1, 5):
        assert f"\\n  #{attempt} transient: HTTP 503 from {host}" in task["exception"]


def test_worker_stats_carry_the_resilience_section(
    rig: tuple[Rig, FlowerProcess], upstream: Upstream, unique: str
):
    """``inspect stats`` and Flower's worker API both hold breakers, limiters, fallback and
    counters of the node."""
    worker, flower = rig
    client = worker.client()
    assert client.send_task("res.limited", args=[f"/{unique}"]).get(timeout=20)["status"] == 200

    stats = client.control.inspect(destination=[worker.worker.nodename], timeout=5, limit=1).stats()
    section = stats[worker.worker.nodename]["resilience"]
    assert section["breakers"]["upstream"]["state"] == "closed"
    assert section["breakers"]["inspect-outage"]["state"] == "closed"
    assert section["limiters"]["api"] == {
        "rate": "10/s",
        "wait": section["limiters"]["api"]["wait"],
        "in_use": 0,
        "concurrency": 3,
        "paused_until": None,
    }
    assert section["store"]["reachable"] is True
    assert section["fallback"] == {"active": False, "mode": "allow", "answers": 0, "last_at": None}
    assert section["counters"]["succeeded"] >= 1
    assert section["counters"]["attempts"] >= section["counters"]["succeeded"]

    workers = flower.get("/api/workers", refresh=1)
    shown = workers[worker.worker.nodename]["stats"]["resilience"]
    assert set(shown) == {"breakers", "limiters", "store", "fallback", "counters", "parked"}
    assert shown["breakers"]["upstream"]["state"] == "closed"
    assert shown["parked"]["releaser"] == "running"


def test_flower_sees_only_celery_task_states(rig: tuple[Rig, FlowerProcess]):
    """No custom task-* events: every task Flower tracked has one of Celery's states."""
    _, flower = rig
    tasks = flower.get("/api/tasks")
    assert tasks
    assert {task["state"] for task in tasks.values()} <= set(states.ALL_STATES)


def test_stats_say_when_the_pool_falls_back(
    redis_server: RedisServer, upstream: Upstream, tmp_path: Path, unique: str
):
    """With the state store gone, the section says so: unreachable, fallback active, and
    how many gate calls the pool answered alone."""
    with RedisServer(tmp_path / "state") as state:
        env = {"RESILIENCE_TEST_STATE": state.url(0)}
        with worker_rig(redis_server, upstream, tmp_path, extra_env=env) as rig:
            state.kill()
            client = rig.client()
            assert client.send_task("res.guarded", args=[f"/{unique}"]).get(timeout=20)
            stats = client.control.inspect(
                destination=[rig.worker.nodename], timeout=5, limit=1
            ).stats()
    section = stats[rig.worker.nodename]["resilience"]
    assert section["store"]["reachable"] is False
    assert section["store"]["error"].startswith("ConnectionError: ")
    assert section["fallback"]["active"] is True
    assert section["fallback"]["answers"] >= 1
    assert section["breakers"] == {}
