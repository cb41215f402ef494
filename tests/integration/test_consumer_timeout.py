"""Waits of a minute on RabbitMQ, whose ``consumer_timeout`` closes the channel of a message
held unacknowledged too long (and so stops the worker): each countdown stays below it.

A private node with a 5 s ``consumer_timeout``. RabbitMQ checks it once a minute per
channel, so the waits here last longer than a minute from the worker's start, and this
module takes about two minutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from celery_resilience.core.gates import BreakerState
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Response, Upstream
from tests.helpers.celery_apps import app_env
from tests.helpers.polling import wait_until
from tests.helpers.processes import has_exited, tail
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CONSUMER_TIMEOUT = 5.0
#: As tests.apps.long_waits declares it (that module needs a worker's environment).
LONG_BREAKER = CircuitBreaker("long", minimum_calls=1, open_for=40.0, probe_lease=5.0)
#: What a worker logs when RabbitMQ closes its channel for a message held too long.
CLOSED = ("PreconditionFailed", "timed out", "Connection to broker lost")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """A private RabbitMQ node whose consumer_timeout is 5 s (RabbitMQ's tick: a minute)."""
    directory = tmp_path_factory.mktemp("rabbitmq")
    with RabbitMQNode(directory, consumer_timeout=CONSUMER_TIMEOUT) as rabbit:
        yield rabbit


def test_minute_long_waits_keep_the_worker_alive(
    node: RabbitMQNode,
    worker_factory: Callable[..., CeleryWorker],
    celery_client: Callable[..., Celery],
    redis_server: RedisServer,
    upstream: Upstream,
    queue: str,
    unique: str,
    request: pytest.FixtureRequest,
):
    """A 503 with ``Retry-After: 60``, and tasks deferred 40-80 s by an open breaker, on a
    broker that allows 5 s unacknowledged: all complete, each body runs once per attempt,
    and the worker is the same process throughout, its channel never closed. Beside it, a
    plain Celery countdown of 90 s gets its own worker's channel closed: the timeout the
    test relies on is enforced within the test's time."""
    prefix = f"ct-{unique}"
    env = {
        **app_env(broker=node.url, backend=redis_server.url(1), upstream=upstream.url, queue=queue),
        "RESILIENCE_TEST_STATE": redis_server.url(2),
        "RESILIENCE_TEST_PREFIX": prefix,
        "RESILIENCE_TEST_GUARD": "always",
        "RESILIENCE_TEST_CONSUMER_TIMEOUT": str(CONSUMER_TIMEOUT),
    }
    plain_queue = f"plain-{unique}"
    plain_env = {**env, **app_env(
        broker=node.url, backend=redis_server.url(1), upstream=upstream.url, queue=plain_queue
    )}  # fmt: skip
    worker = worker_factory("tests.apps.long_waits", env=env, name=f"long-{unique}", wait=False)
    control = worker_factory(
        "tests.apps.plain", env=plain_env, name=f"plain-{unique}", concurrency=1, wait=False
    )
    worker.wait_ready(timeout=90)
    control.wait_ready(timeout=90)
    pid = worker.pid
    client = celery_client(node.url, redis_server.url(1), queue)
    plain = celery_client(node.url, redis_server.url(1), plain_queue)

    held = f"/{unique}/held"
    told = f"/{unique}/told"
    opener = f"/{unique}/opener"
    deferred = f"/{unique}/deferred"
    for path, first in ((told, [Response(status=503, retry_after=60)]), (opener, [503])):
        upstream.script(path, first, then=200)
    for path in (held, deferred):
        upstream.script(path, [], then=200)

    plain.send_task("plain.fetch", args=[held], countdown=90)
    retry_after = client.send_task("res.call", args=[told])
    opening = client.send_task("res.long_breaker", args=[opener])
    store = RedisStore(redis_server.client(2), KeySpace(prefix))
    request.addfinalizer(store.client.close)
    opened = wait_until(
        lambda: (s := store.breaker(LONG_BREAKER)).state is BreakerState.OPEN and s,
        timeout=60,
        what="the breaker 'long' open",
    )
    waiting = [client.send_task("res.long_breaker", args=[deferred]) for _ in range(3)]
    results = [retry_after, opening, *waiting]

    def all_done() -> bool:
        if has_exited(pid):  # what an uncapped countdown does: fail now, with the reason
            pytest.fail(f"the worker exited:\n{tail(worker.logfile, 15)}")
        return all(r.ready() for r in results)

    wait_until(all_done, timeout=240, interval=0.5, what="every task done")
    assert [r.state for r in results] == ["SUCCESS"] * len(results)
    assert all(r.get(timeout=5)["status"] == 200 for r in results)

    # each body ran once per attempt: one failure and one success, or one success
    assert upstream.count(told) == 2
    assert upstream.count(opener) == 2
    assert upstream.count(deferred) == len(waiting)
    first, second = upstream.requests(told)
    assert second.start - first.start >= 60.0
    assert all(c.start >= opened.open_until - 0.05 for c in upstream.requests(deferred))

    # the worker never lost its channel: the same process, still answering
    assert worker.pid == pid
    assert not has_exited(pid)
    worker.wait_ready(timeout=30)
    log = worker.log_text()
    assert [word for word in CLOSED if word in log] == []
    for result in results:
        assert len(re.findall(rf"\[{result.id}\] succeeded in", log)) == 1
    # the waits were taken in legs below the timeout
    assert "waiting out a long countdown" in log

    # the uncapped countdown was caught by RabbitMQ's check: the timeout was real
    wait_until(
        lambda: "PreconditionFailed" in control.log_text(),
        timeout=120,
        interval=0.5,
        what="the plain worker's channel closed for its 90 s countdown",
    )
