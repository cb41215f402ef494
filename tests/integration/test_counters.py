"""The node's counters in ``inspect stats``: every attempt of every pool process counted once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_resilience import CircuitBreaker
from example_project.upstream import Upstream
from tests.helpers.inspection import Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration

SUCCESSES = 6


@pytest.fixture(scope="module")
def rig(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    """One prefork worker with two pool processes, for the module."""
    with worker_rig(redis_server, upstream_server, tmp_path_factory.mktemp("counters")) as rig:
        yield rig


def _counters(rig: Rig) -> dict[str, Any] | None:
    """The node's counters, or None when it did not answer in time."""
    client = rig.client()
    node = rig.worker.nodename
    stats = client.control.inspect(destination=[node], timeout=5, limit=1).stats()
    if not stats or node not in stats:
        return None
    counters: dict[str, Any] = stats[node]["resilience"]["counters"]
    return counters


def _read(rig: Rig) -> dict[str, Any]:
    return wait_until(lambda: _counters(rig), timeout=30, interval=0.5, what="the node's stats")


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k != "last_fallback_at"}


def test_each_outcome_is_counted_once_over_the_pool(rig: Rig, upstream: Upstream, unique: str):
    """Successes, failures, retries, a give-up and a deferral, summed over both pool
    processes: each attempt counted once, and ended in exactly one way. (No message is
    redelivered here: a redelivered copy that finds its attempt done or running is an
    attempt with none of these outcomes.)"""
    client = rig.client()
    before = _read(rig)

    ok = [client.send_task("res.call", args=[f"/{unique}/ok{i}"]) for i in range(SUCCESSES)]
    for result in ok:
        assert result.get(timeout=30)["status"] == 200
    upstream.script(f"/{unique}/down", [], then=503)
    failed = client.send_task("res.call3", args=[f"/{unique}/down"])
    with pytest.raises(Exception, match="gave up after 4 attempt"):
        failed.get(timeout=30)

    store, breaker = rig.store, CircuitBreaker("upstream")
    store.breaker(breaker, "open")
    try:
        held = client.send_task("res.guarded", args=[f"/{unique}/held"])
        wait_until(
            lambda: _delta(_read(rig), before)["deferrals"] >= 1,
            timeout=20,
            interval=0.5,
            what="a deferral counted",
        )
    finally:
        store.breaker(breaker, "reset")
    assert held.get(timeout=30)["status"] == 200

    delta = _delta(_read(rig), before)
    assert delta["succeeded"] == SUCCESSES + 1
    assert delta["failed"] == 4
    assert delta["retries"] == 3
    assert delta["gave_up"] == 1
    assert delta["deferrals"] >= 1
    assert delta["attempts"] == delta["succeeded"] + delta["failed"] + delta["deferrals"]
