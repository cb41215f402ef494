"""Fault injection with real processes: a state store that dies, a worker killed mid-attempt,
a broker that restarts, a skewed clock, a wait longer than the visibility timeout."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_resilience.core.gates import BreakerState
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit
from celery_resilience.state.deadletters import DeadLetter, DeadLetters
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Response, Upstream
from tests.helpers.brokers import require_rabbitmq
from tests.helpers.celery_apps import app_env
from tests.helpers.cluster import least_span, windows
from tests.helpers.polling import wait_until
from tests.helpers.processes import has_exited
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.faults"
WorkerFactory = Callable[..., CeleryWorker]


def _env(
    broker: str, backend: str, state: str, upstream: Upstream, queue: str, prefix: str, **extra: str
) -> dict[str, str]:
    return {
        **app_env(broker=broker, backend=backend, upstream=upstream.url, queue=queue),
        "RESILIENCE_TEST_STATE": state,
        "RESILIENCE_TEST_PREFIX": prefix,
        **extra,
    }


def test_state_store_dies_and_comes_back(
    worker_factory, celery_client, redis_server, upstream, queue, unique, tmp_path
):
    """Redis (state) killed mid-run, restarted: every task completes; the fallback is logged
    once per process for the outage, not once per task."""
    with RedisServer(tmp_path / "state") as state:
        env = _env(
            redis_server.url(0), redis_server.url(1), state.url(0), upstream, queue, f"f-{unique}"
        )
        worker = worker_factory(APP, env=env)
        client = celery_client(redis_server.url(0), redis_server.url(1), queue)
        path = f"/{unique}/work"
        upstream.script(path, [], then=Response(delay=0.05))
        results = [client.send_task("res.guarded", args=[path]) for _ in range(60)]
        wait_until(lambda: upstream.count(path) >= 10, timeout=20, what="the first calls")
        state.kill()
        wait_until(lambda: upstream.count(path) >= 30, timeout=30, what="calls while it is down")
        state.restart()
        assert all(r.get(timeout=60)["status"] == 200 for r in results)
    log = worker.log_text()
    down = log.count("unreachable")
    assert 1 <= down <= 2, f"{down} fallback warnings for one outage of 2 processes"
    assert upstream.count(path) == 60


def _letters_of(state: RedisServer, prefix: str, task_id: str) -> list[DeadLetter]:
    client = state.client(0)
    try:
        return [
            letter
            for letter in DeadLetters(client, KeySpace(prefix)).list(100)
            if letter.task_id == task_id
        ]
    finally:
        client.close()


@pytest.mark.parametrize("comes_back", [True, False], ids=["store-returns", "worker-stops"])
def test_a_dead_letter_kept_while_the_store_is_down_is_not_lost(
    worker_factory, celery_client, redis_server, upstream, queue, unique, tmp_path, comes_back
):
    """A permanent failure while the state store is down keeps its dead letter in memory:
    stored by a thread once the store answers, with no later task to carry it; or, when the
    worker stops first, written whole to the worker's log."""
    prefix = f"dl-{unique}"
    with RedisServer(tmp_path / "state") as state:
        env = _env(redis_server.url(0), redis_server.url(1), state.url(0), upstream, queue, prefix)
        worker = worker_factory(APP, env=env)
        client = celery_client(redis_server.url(0), redis_server.url(1), queue)
        path = f"/{unique}/gone"
        upstream.script(path, [], then=404)
        state.kill()
        result = client.send_task("res.guarded", args=[path])
        with pytest.raises(Exception, match="404"):
            result.get(timeout=30)
        wait_until(
            lambda: "kept in memory until the state store answers" in worker.log_text(),
            timeout=10,
            what="the letter kept in memory",
        )
        if comes_back:
            state.restart()
            found = wait_until(
                lambda: _letters_of(state, prefix, result.id), timeout=20, what="the letter stored"
            )
            assert found[0].task_name == "res.guarded"
            assert "not stored" not in worker.log_text()
        else:
            worker.stop()
            lines = [line for line in worker.log_text().splitlines() if "not stored" in line]
            assert len(lines) == 1, lines
            assert result.id in lines[0]
            assert '"task_name": "res.guarded"' in lines[0]
            assert '"args_json": null' in lines[0]


def test_worker_killed_mid_attempt_with_acks_late(
    worker_factory, celery_client, redis_server, upstream, queue, unique, request
):
    """SIGKILL a whole worker while it runs an acks_late task: another worker completes it,
    exactly one success is recorded, and the dead worker's concurrency slot comes back."""
    env = _env(
        redis_server.url(0),
        redis_server.url(1),
        redis_server.url(2),
        upstream,
        queue,
        f"k-{unique}",
        RESILIENCE_TEST_ACKS_LATE="1",
        RESILIENCE_TEST_VISIBILITY="3",
        RESILIENCE_TEST_ATTEMPT_LEASE="4",
    )
    victim = worker_factory(APP, env=env, name=f"victim-{unique}")
    client = celery_client(redis_server.url(0), redis_server.url(1), queue)
    path = f"/{unique}/slow"
    upstream.script(path, [Response(delay=30)], then=200)
    result = client.send_task("res.pooled", args=[path])
    wait_until(lambda: upstream.count(path) == 1, timeout=20, what="the first attempt in flight")
    store = RedisStore(redis_server.client(2), KeySpace(f"k-{unique}"))
    request.addfinalizer(store.client.close)
    pool = ConcurrencyLimit("api", 3, lease=5.0)
    assert store.limiter(None, pool, "api").in_use == 1
    victim.kill()
    survivor = worker_factory(APP, env=env, name=f"survivor-{unique}")

    assert result.get(timeout=60)["status"] == 200
    assert upstream.count(path) == 2
    line = f"[{result.id}] succeeded in"
    wait_until(lambda: line in survivor.log_text(), timeout=10, what="the success logged")
    assert survivor.log_text().count(line) == 1
    wait_until(
        lambda: store.limiter(None, pool, "api").in_use == 0,
        timeout=10,
        what="the dead worker's slot back",
    )


@pytest.fixture(params=["redis", "amqp"])
def restartable_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], None]]]:
    """A broker of the test's own and a way to restart it: Redis with its append-only
    file, or a private RabbitMQ node (never the shared one on 5672)."""
    if request.param == "amqp":
        node: RabbitMQNode = request.getfixturevalue("rabbitmq_node")
        yield node.url, node.restart
        return
    with RedisServer(
        tmp_path / "broker", extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    ) as own:
        yield own.url(0), own.restart


def test_broker_restart_loses_no_task(
    restartable_broker, worker_factory, celery_client, redis_server, upstream, queue, unique
):
    """The broker restarts mid-run (Redis with its append-only file; RabbitMQ with its
    durable queues): every task completes. If the worker process does not survive the
    restart (kombu's Redis transport can die while restoring unacknowledged messages), a
    new one is started, as a process supervisor would, and finishes the work."""
    broker, restart = restartable_broker
    env = _env(
        broker,
        redis_server.url(1),
        redis_server.url(2),
        upstream,
        queue,
        f"b-{unique}",
        RESILIENCE_TEST_ACKS_LATE="1",
        RESILIENCE_TEST_VISIBILITY="3",
    )
    workers = [worker_factory(APP, env=env)]
    client = celery_client(broker, redis_server.url(1), queue)
    path = f"/{unique}/work"
    upstream.script(path, [], then=Response(delay=0.05))
    results = [client.send_task("res.call", args=[path]) for _ in range(40)]
    wait_until(lambda: upstream.count(path) >= 5, timeout=30, what="the first calls")
    restart()

    def all_done() -> bool:
        if has_exited(workers[-1].pid):
            workers.append(worker_factory(APP, env=env, name=f"again-{len(workers)}-{unique}"))
        return all(r.ready() for r in results)

    wait_until(all_done, timeout=120, interval=0.5, what="every task done")
    assert all(r.get(timeout=5)["status"] == 200 for r in results)


def test_a_skewed_worker_clock_changes_no_timing(
    worker_factory, celery_client, redis_server, upstream, queue, unique, request
):
    """Two workers whose clocks (as the library reads them) are 30 s ahead and 30 s behind:
    the breaker still opens for its open_for, and the rate limit still holds."""
    prefix = f"s-{unique}"
    base = _env(
        redis_server.url(0), redis_server.url(1), redis_server.url(2), upstream, queue, prefix
    )
    worker_factory(APP, env={**base, "RESILIENCE_TEST_CLOCK_SKEW": "30"}, wait=False)
    worker_factory(APP, env={**base, "RESILIENCE_TEST_CLOCK_SKEW": "-30"})
    client = celery_client(redis_server.url(0), redis_server.url(1), queue)

    limited = f"/{unique}/limited"
    upstream.script(limited, [], then=200)
    results = [client.send_task("res.limited", args=[limited]) for _ in range(30)]
    assert all(r.get(timeout=60)["status"] == 200 for r in results)
    starts = sorted(r.start for r in upstream.requests(limited))
    assert starts[-1] - starts[0] >= least_span(30, 0.1)
    # at most 11 grants in any second (10/s and the limiter's slack), one more at the
    # upstream for the calls' own start jitter; a skewed clock would burst far past it
    assert windows(starts) <= 12

    down = f"/{unique}/down"
    upstream.phases(down, [(4.0, 503), (None, 200)])
    failing = [client.send_task("res.guarded", args=[down]) for _ in range(10)]
    store = RedisStore(redis_server.client(2), KeySpace(prefix))
    request.addfinalizer(store.client.close)
    opened = wait_until(
        lambda: (s := store.breaker(CircuitBreaker("upstream"))).state is BreakerState.OPEN and s,
        timeout=20,
        what="the breaker open",
    )
    assert all(r.get(timeout=60)["status"] == 200 for r in failing)
    # nobody called while it was open, whatever the workers' clocks said (calls already in
    # flight when it opened may land a moment later)
    during = [
        c.start
        for c in upstream.requests(down)
        if opened.changed_at + 0.3 <= c.start < opened.open_until - 0.05
    ]
    assert during == []
    assert opened.open_until - opened.changed_at == pytest.approx(2.0, abs=0.01)


def test_a_wait_longer_than_the_visibility_timeout_runs_once(
    worker_factory, celery_client, redis_server, upstream, queue, unique
):
    """Retry-After 8 s with a 3 s visibility timeout and parking off: the wait is taken
    in legs below it, and the next attempt runs exactly once, no earlier than told."""
    env = _env(
        redis_server.url(0),
        redis_server.url(1),
        redis_server.url(2),
        upstream,
        queue,
        f"v-{unique}",
        RESILIENCE_TEST_VISIBILITY="3",
        RESILIENCE_TEST_PARK_AFTER="0",
    )
    worker = worker_factory(APP, env=env)
    client = celery_client(redis_server.url(0), redis_server.url(1), queue)
    path = f"/{unique}/later"
    upstream.script(path, [Response(status=429, retry_after=8)], then=200)

    result = client.send_task("res.call", args=[path])

    assert result.get(timeout=40)["status"] == 200
    first, second = upstream.requests(path)
    assert second.start - first.start >= 8.0
    runs = re.findall(rf"{result.id}\]: attempt 2 succeeded", worker.log_text())
    assert len(runs) == 1
    assert "waiting out a long countdown" in worker.log_text()


def test_rabbitmq_is_required_in_ci():
    """CI sets REQUIRE_RABBITMQ=1: the shared broker must answer there (the amqp cases
    above start a private node, which fails rather than skips there too)."""
    if os.environ.get("REQUIRE_RABBITMQ") == "1":
        assert require_rabbitmq()
