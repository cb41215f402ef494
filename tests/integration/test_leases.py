"""Leases that outlive a body's defaults, on 2 real prefork nodes: a half-open probe
slower than its breaker's ``open_for``, and an attempt whose pool process is killed
(``task_reject_on_worker_lost``). Tasks from :mod:`tests.apps.leases`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import parse_qs

import pytest
from celery import Celery

from celery_resilience.core.gates import BreakerState, Denial, GateAsk, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Response, Upstream
from tests.helpers.breakers import half_open
from tests.helpers.cluster import client_for, log_lines, module_env, running_nodes
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.leases"
#: The breakers of res.slow_probe and res.lost_probe, as the workers know them.
SLOW_PROBE = CircuitBreaker("slow-probe", minimum_calls=2, open_for=1.0)
LOST_PROBE = CircuitBreaker("lost-probe", minimum_calls=1, open_for=0.5)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    return module_env(redis_server, upstream_server.url)


@pytest.fixture(scope="module")
def nodes(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CeleryWorker]]:
    """2 worker nodes of 2 prefork processes each."""
    logs = tmp_path_factory.mktemp("lease-workers")
    with running_nodes(env, logs, nodes=2, concurrency=2, app=APP) as workers:
        yield workers


@pytest.fixture
def client(celery_client, env: dict[str, str], nodes: list[CeleryWorker]) -> Celery:
    return client_for(celery_client, env)


@pytest.fixture
def store(redis_server: RedisServer, env: dict[str, str]) -> Iterator[RedisStore]:
    state = RedisStore(redis_server.client(2), KeySpace(env["RESILIENCE_TEST_PREFIX"]))
    yield state
    state.client.close()


def test_a_slow_probe_runs_alone_and_closes_the_breaker(client, upstream, unique, store):
    """Two failures open the breaker for 1 s; every later call takes 3 s. The first probe
    holds its slot for its whole body (the task's time limit), so no other call starts
    while it runs, and its success closes the breaker."""
    path = f"/{unique}/slow-probe"
    upstream.script(path, [Response(503), Response(503)], then=Response.slow(3.0))
    results = [client.send_task("res.slow_probe", args=[path]) for _ in range(2)]
    wait_until(
        lambda: store.breaker(SLOW_PROBE).state is not BreakerState.CLOSED,
        timeout=20,
        what="the breaker open",
    )
    results += [client.send_task("res.slow_probe", args=[path]) for _ in range(4)]
    wait_until(
        lambda: store.breaker(SLOW_PROBE).state is BreakerState.CLOSED,
        timeout=40,
        what="the breaker closed by the slow probe",
    )
    assert all(r.get(timeout=60)["status"] == 200 for r in results)
    calls = sorted((r for r in upstream.requests(path) if r.status == 200), key=lambda r: r.start)
    probe = calls[0]
    during = [r for r in calls[1:] if r.start < probe.end]
    assert not during, f"{len(during)} calls started while the probe was in flight"


def _kill_the_caller(upstream: Upstream, path: str, nodes: list[CeleryWorker]) -> None:
    """SIGKILL the pool process whose call to ``path`` is in flight (it names itself)."""
    first = wait_until(lambda: upstream.requests(path), timeout=20, what="the body in flight")[0]
    pid = int(parse_qs(first.query)["pid"][0])
    assert any(pid in node.child_pids() for node in nodes), "the call came from a pool process"
    os.kill(pid, signal.SIGKILL)


def test_the_copy_of_a_killed_pool_process_runs_at_once(client, upstream, unique, nodes):
    """SIGKILL the pool process running an acks_late body: the worker's main process gives
    back the attempt's lease before the message is requeued, so the copy runs at its first
    delivery (never told "running elsewhere"), and exactly one success is recorded."""
    path = f"/{unique}/lost"
    upstream.script(path, [Response.slow(60.0)], then=200)
    result = client.send_task("res.lost_body", args=[path])
    _kill_the_caller(upstream, path, nodes)
    assert result.get(timeout=60)["status"] == 200
    assert upstream.count(path) == 2
    assert not [line for line in log_lines(nodes, "running elsewhere") if result.id in line]
    line = f"[{result.id}] succeeded in"
    wait_until(lambda: log_lines(nodes, line), timeout=10, what="the success logged")
    assert len(log_lines(nodes, line)) == 1


def test_only_a_running_lease_of_the_dead_process_is_dropped(store, unique):
    """The main process drops the lease its lost pool process holds, and nothing else: not
    a lease held by another process, nor one that names no process, nor a finished
    attempt's mark."""
    key = store.keys.attempt(f"t-{unique}", 1, "-")
    dead = GateAsk(holder="t:1", attempt_key=key, attempt_lease=30.0, attempt_owner="n/1")
    alive = GateAsk(holder="t:1", attempt_key=key, attempt_lease=30.0, attempt_owner="n/2")
    assert store.gate(dead).allowed
    assert not store.drop_lost_lease(key, "n/2")
    assert store.gate(alive).denial is Denial.RUNNING
    assert store.drop_lost_lease(key, "n/1")
    assert store.gate(alive).allowed  # the copy runs
    assert not store.drop_lost_lease(key, "n/1")
    assert store.gate(dead).denial is Denial.RUNNING
    store.record(OutcomeReport(holder="t:1", attempt_key=key, mark_ttl=30.0))
    assert not store.drop_lost_lease(key, "n/2")
    assert store.gate(dead).denial is Denial.DONE
    unnamed = store.keys.attempt(f"t-{unique}", 2, "-")
    assert store.gate(GateAsk(holder="t:2", attempt_key=unnamed, attempt_lease=30.0)).allowed
    assert not store.drop_lost_lease(unnamed, "n/1")
    assert store.gate(replace(dead, holder="t:2", attempt_key=unnamed)).denial is Denial.RUNNING


def test_the_copy_of_a_killed_probe_takes_its_probe_slot(client, upstream, unique, nodes, store):
    """The pool process running the only half-open probe (a lease of 60 s: no time limit)
    is killed: the probe slot goes back with the attempt lease, so the copy runs at once
    as the probe, and its success closes the breaker."""
    half_open(store, LOST_PROBE)
    path = f"/{unique}/lost-probe"
    upstream.script(path, [Response.slow(60.0)], then=200)
    result = client.send_task("res.lost_probe", args=[path])
    _kill_the_caller(upstream, path, nodes)
    assert result.get(timeout=30)["status"] == 200
    assert store.breaker(LOST_PROBE).state is BreakerState.CLOSED
    assert upstream.count(path) == 2
