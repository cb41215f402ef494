"""Fixtures of the test rig: a private Redis, the flaky upstream, workers, brokers.

- ``redis_server``: one private ``redis-server`` per session (never the one on 6379).
- ``upstream``: the session's upstream, reset (scripts and records) for each test.
- ``unique``/``queue``: names no other test (or session) uses.
- ``broker_url``: parametrised over the broker matrix (``redis``, ``amqp``).
- ``rabbitmq_node``: a private RabbitMQ node for one test (to restart, to configure);
  ``rabbitmq_factory(consumer_timeout=..., ...)`` starts nodes of another configuration.
- ``worker_factory``: starts workers, always stops them at the end of the test; on a
  failure the report names each worker's log file (under the test's ``tmp_path``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from example_project.upstream import Upstream
from tests.helpers.brokers import BROKER_KINDS, delete_amqp_queue, is_amqp, require_rabbitmq
from tests.helpers.celery_apps import ENV_BROKER, ENV_QUEUE, make_app
from tests.helpers.cluster import RESILIENT_APP, client_for, module_env, running_nodes
from tests.helpers.processes import tail
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker, stop_workers

WORKERS = pytest.StashKey[list[CeleryWorker]]()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for the whole session; tests keep apart by unique names."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[Upstream]:
    """The flaky upstream, one per session (use ``upstream`` in tests)."""
    with Upstream() as server:
        yield server


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    """The session's upstream, serving, with no scripts and no records."""
    upstream_server.start()  # in case a test stopped it
    upstream_server.reset()
    return upstream_server


@pytest.fixture
def unique() -> str:
    """A short id unique to this test, for queue, node, key and path names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def queue(unique: str) -> str:
    """A queue name of this test's own."""
    return f"q-{unique}"


@pytest.fixture(params=BROKER_KINDS)
def broker_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    """The broker URL, once per broker kind: the private Redis (db 0), RabbitMQ."""
    if request.param == "amqp":
        return require_rabbitmq()
    return redis_server.url(0)


@pytest.fixture
def rabbitmq_factory(tmp_path: Path) -> Iterator[Callable[..., RabbitMQNode]]:
    """Start private RabbitMQ nodes (``RabbitMQNode`` options), each in a directory under
    the test's ``tmp_path``, all stopped by PID at the end. Skips without rabbitmq-server,
    or fails when REQUIRE_RABBITMQ=1.

    Request it before ``worker_factory`` so that the workers stop while it still runs.
    """
    nodes: list[RabbitMQNode] = []

    def start(**options: Any) -> RabbitMQNode:
        node = RabbitMQNode(tmp_path / f"rabbitmq{len(nodes) + 1}", **options)
        nodes.append(node)
        return node.start()

    yield start
    for node in reversed(nodes):
        node.stop()


@pytest.fixture
def rabbitmq_node(rabbitmq_factory: Callable[..., RabbitMQNode]) -> RabbitMQNode:
    """A private RabbitMQ node with RabbitMQ's defaults, for this test alone."""
    return rabbitmq_factory()


@pytest.fixture
def backend_url(redis_server: RedisServer) -> str:
    """The result backend: the private Redis, db 1."""
    return redis_server.url(1)


@pytest.fixture
def celery_client() -> Iterator[Callable[..., Celery]]:
    """Make client apps (``celery_client(broker, backend, queue)``), closed at the end.

    On RabbitMQ, the queue a client app sends to is deleted at the end.
    """
    apps: list[tuple[Celery, str, str]] = []

    def make(broker: str, backend: str | None, queue: str) -> Celery:
        app = make_app("client", broker=broker, backend=backend, queue=queue, set_as_current=False)
        apps.append((app, broker, queue))
        return app

    yield make
    for app, broker, queue in apps:
        app.close()
        if is_amqp(broker):
            delete_amqp_queue(broker, queue)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    """The worker environment of a test module (its own queue and key prefix, leases on);
    a module overrides it to add variables."""
    return module_env(redis_server, upstream_server.url)


@pytest.fixture(scope="module")
def worker(
    request: pytest.FixtureRequest, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One worker node shared by a module's tests: its ``APP`` (default the resilient test
    app), with ``WORKER_CONCURRENCY`` processes (default 2)."""
    module = request.module
    with running_nodes(
        env,
        tmp_path_factory.mktemp("workers"),
        nodes=1,
        concurrency=getattr(module, "WORKER_CONCURRENCY", 2),
        name="shared",
        app=getattr(module, "APP", RESILIENT_APP),
    ) as (node,):
        yield node


@pytest.fixture
def client(celery_client: Callable[..., Celery], env: dict[str, str]) -> Celery:
    """A client app on the module's broker, backend and queue."""
    return client_for(celery_client, env)


@pytest.fixture
def worker_factory(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> Iterator[Callable[..., CeleryWorker]]:
    """Start a worker: ``worker_factory(app="tests.apps.plain", *, env, name=None, ...)``.

    Other keywords go to :class:`CeleryWorker`; ``wait=False`` returns before it is ready
    (start several, then ``wait_ready`` each). Every worker is stopped at the end, and the
    amqp queues it used are deleted.
    """
    workers: list[CeleryWorker] = []
    request.node.stash[WORKERS] = workers

    def start(
        app: str = "tests.apps.plain",
        *,
        env: dict[str, str],
        name: str | None = None,
        wait: bool = True,
        **options: Any,
    ) -> CeleryWorker:
        name = name or f"w{len(workers) + 1}-{unique}"
        logfile = tmp_path / "workers" / f"{name}.log"
        worker = CeleryWorker(app, name, env=env, logfile=logfile, **options)
        workers.append(worker)
        worker.start()
        if wait:
            worker.wait_ready()
        return worker

    yield start
    try:
        stop_workers(workers)
    finally:
        for broker, queue in {
            (w.env.get(ENV_BROKER, ""), q)
            for w in workers
            for q in w.queues or [w.env.get(ENV_QUEUE, "celery")]
        }:
            if is_amqp(broker):
                delete_amqp_queue(broker, queue)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Add each worker's log file and its tail to the report of a failing test."""
    report = yield
    workers = item.stash.get(WORKERS, [])
    if report.failed and workers:
        for worker in workers:
            report.sections.append(
                (f"worker {worker.name}: {worker.logfile}", tail(worker.logfile, 30))
            )
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is an integration test (``-m integration``)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
