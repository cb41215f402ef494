"""Long waits leave the workers: parked in the broker's Redis, published again when due.

Real workers on a Redis broker whose visibility timeout is 3 s: a wait of 8 s was held
in a worker (and split in hops below that timeout) before; parked, each task is delivered
once per attempt and no worker holds it meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_resilience.integration.parking import publish
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.parked import ParkedSet
from example_project.upstream import Response, Upstream
from tests.helpers.brokers import require_rabbitmq
from tests.helpers.celery_apps import app_env
from tests.helpers.cluster import client_for, note, wait_all
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import deliveries

pytestmark = pytest.mark.integration

APP = "tests.apps.resilient"


def _env(
    redis_server: RedisServer,
    upstream: Upstream,
    unique: str,
    *,
    broker: str | None = None,
    state: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """A worker environment of this test's own: broker (default the private Redis, db 0),
    results in db 1, state (default db 2), its own queue and key prefix, ``extra``."""
    return {
        **app_env(
            broker=broker or redis_server.url(0),
            backend=redis_server.url(1),
            upstream=upstream.url,
            queue=f"q-{unique}",
        ),
        "RESILIENCE_TEST_STATE": state or redis_server.url(2),
        "RESILIENCE_TEST_PREFIX": f"t-{unique}",
        **extra,
    }


def test_a_long_retry_after_is_parked_not_held(
    worker_factory, celery_client, redis_server, upstream, unique, request
):
    """20 tasks told Retry-After: 8 with a 3 s visibility timeout: each is delivered twice
    (the 429 and the retry), never in hops, and the retry comes after the 8 s."""
    env = _env(redis_server, upstream, unique, RESILIENCE_TEST_VISIBILITY="3")
    node = worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    prefix = f"/{unique}/later"
    paths = [f"{prefix}/{i}" for i in range(20)]
    for path in paths:
        upstream.script(path, [Response(429, retry_after=8)], then=200)

    results = [client.send_task("res.call", args=[path]) for path in paths]

    assert (
        wait_all(results, timeout=90, what="20 tasks told to come back in 8 s") == ["SUCCESS"] * 20
    )
    seen = deliveries([node], "res.call", {r.id for r in results})
    note(request, deliveries_per_task=sum(seen.values()) / 20)
    assert set(seen.values()) == {2}
    for path in paths:
        first, second = upstream.requests(path)
        assert (first.status, second.status) == (429, 200)
        assert second.start - first.start >= 8.0
    assert "not parked" not in node.log_text()


def test_tasks_deferred_by_an_open_breaker_are_parked(
    worker_factory, celery_client, redis_server, upstream, unique, request
):
    """20 tasks against an upstream down for 12 s behind a breaker that stays open 8 s:
    the deferred waits are parked, every task succeeds exactly once after recovery, and a
    task is delivered about twice (its failure or deferral, then its run)."""
    env = _env(redis_server, upstream, unique)
    node = worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    prefix = f"/{unique}/outage"
    upstream.phases(prefix, [(12.0, 503), (None, 200)])

    results = [client.send_task("res.long_outage", args=[f"{prefix}/{i}"]) for i in range(20)]

    assert wait_all(results, timeout=120, what="20 tasks through an outage") == ["SUCCESS"] * 20
    seen = deliveries([node], "res.long_outage", {r.id for r in results})
    per_task = sum(seen.values()) / 20
    note(request, deliveries_per_task=per_task, most=max(seen.values()))
    calls = upstream.requests(prefix)
    for i in range(20):
        assert [c.status for c in calls if c.path == f"{prefix}/{i}"].count(200) == 1
    assert per_task <= 2.5
    assert "not parked" not in node.log_text()


@pytest.fixture
def aof_state(tmp_path) -> Iterator[RedisServer]:
    """A private state store that writes an append-only file (where RabbitMQ's tasks park)."""
    with RedisServer(tmp_path / "aof", extra_args=["--appendonly", "yes"]) as server:
        yield server


def test_on_rabbitmq_long_waits_park_in_a_durable_state_store(
    worker_factory, celery_client, redis_server, aof_state, upstream, unique, request
):
    """RabbitMQ broker, state store with an append-only file: 10 tasks told Retry-After: 8
    are parked there (never held by a worker past RabbitMQ's consumer timeout) and each is
    delivered twice, run once after the wait."""
    broker = require_rabbitmq()
    env = _env(redis_server, upstream, unique, broker=broker, state=aof_state.url(0))
    node = worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    prefix = f"/{unique}/rabbit"
    paths = [f"{prefix}/{i}" for i in range(10)]
    for path in paths:
        upstream.script(path, [Response(429, retry_after=8)], then=200)

    results = [client.send_task("res.call", args=[path]) for path in paths]
    parked = ParkedSet(aof_state.client(0), KeySpace(f"t-{unique}"))
    wait_until(lambda: parked.summary().count == 10, timeout=30, what="10 parked tasks")

    assert wait_all(results, timeout=90, what="10 tasks on RabbitMQ") == ["SUCCESS"] * 10
    seen = deliveries([node], "res.call", {r.id for r in results})
    note(request, deliveries_per_task=sum(seen.values()) / 10)
    assert set(seen.values()) == {2}
    assert parked.summary().count == 0
    calls = upstream.requests()
    for path in paths:
        first, second = [c for c in calls if c.path == path]
        assert second.start - first.start >= 8.0


def test_on_rabbitmq_a_rate_limited_backlog_is_delivered_about_once(
    worker_factory, celery_client, redis_server, upstream, unique, request
):
    """RabbitMQ broker, 60 tasks behind RateLimit("api", "10/s") on 2 processes: the
    consumer reserves slots as messages arrive, so a task is delivered about once."""
    broker = require_rabbitmq()
    env = _env(redis_server, upstream, unique, broker=broker)
    node = worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    prefix = f"/{unique}/rabbit-rate"
    upstream.script(prefix, [], then=200)

    results = [client.send_task("res.limited", args=[f"{prefix}/{i}"]) for i in range(60)]

    assert wait_all(results, timeout=60, what="60 rate-limited tasks") == ["SUCCESS"] * 60
    seen = deliveries([node], "res.limited", {r.id for r in results})
    per_task = sum(seen.values()) / 60
    note(request, deliveries_per_task=per_task)
    assert per_task <= 1.2
    assert upstream.count(prefix) == 60


def test_a_parked_task_published_twice_runs_once(
    worker_factory, celery_client, redis_server, upstream, unique
):
    """A releaser that died after publishing, before forgetting the entry, leaves it to be
    published again: both copies reach the worker, the task runs once (the attempt lease
    that every released message holds keeps the second copy out)."""
    # this test releases by hand: the worker's releaser never looks
    env = _env(redis_server, upstream, unique, RESILIENCE_TEST_PARK_POLL="3600")
    node = worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    path = f"/{unique}/twice"
    upstream.script(path, [Response(429, retry_after=30)], then=200)
    result = client.send_task("res.call", args=[path])
    parked = ParkedSet(redis_server.client(0), KeySpace(f"t-{unique}"))
    wait_until(lambda: parked.summary().count == 1, timeout=30, what="the task to be parked")

    assert parked.release_now() == 1
    (entry,) = parked.claim_due(limit=10, lease=60.0)
    publish(client, entry)
    publish(client, entry)

    assert result.get(timeout=30)["status"] == 200

    def both_ended() -> bool:
        ends = [
            line
            for line in node.log_text().splitlines()
            if result.id in line and ("succeeded in" in line or "ignored" in line.lower())
        ]
        return len(ends) >= 2

    # a copy that met the other running looks again within 10 s
    wait_until(both_ended, timeout=40, what="both copies to end on the worker")
    assert deliveries([node], "res.call", {result.id})[result.id] >= 3
    assert [c.status for c in upstream.requests(path)] == [429, 200]
