"""Prometheus metrics: fed by the signals, summed over a prefork pool, equal to what the
upstream saw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from celery_resilience import CircuitBreaker
from celery_resilience.core.gates import BreakerState
from celery_resilience.observability.metrics import (
    BREAKER_STATE_VALUES,
)
from example_project.upstream import Response, Upstream
from tests.helpers.inspection import Rig, worker_rig
from tests.helpers.metrics import Samples
from tests.helpers.metrics import samples as _samples
from tests.helpers.metrics import value as _value
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer


@pytest.fixture(scope="module")
def metrics_rig(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Rig, Path, int]]:
    """A prefork worker (-c 2) in multiprocess mode, serving its metrics over HTTP too."""
    base = tmp_path_factory.mktemp("metrics")
    directory = base / "prom"
    directory.mkdir()
    port = free_port()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "RESILIENCE_TEST_METRICS": "1",
        "RESILIENCE_TEST_METRICS_PORT": str(port),
    }
    with worker_rig(redis_server, upstream_server, base, extra_env=env) as rig:
        yield rig, directory, port


def _scrape(directory: Path) -> Samples:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return _samples(registry)


@pytest.mark.integration
def test_a_prefork_worker_counts_exactly_what_the_upstream_saw(
    metrics_rig: tuple[Rig, Path, int], upstream: Upstream, unique: str
):
    """Successes, transient, permanent and rate-limited attempts, retries and give-ups,
    summed over the pool, equal the upstream's records; deferrals add up by reason."""
    rig, directory, port = metrics_rig
    before = _scrape(directory)
    u = f"/{unique}"
    upstream.script(f"{u}/ok", [], then=200)
    upstream.script(f"{u}/flaky", [503, 503], then=200)
    upstream.script(f"{u}/gone", [], then=404)
    upstream.script(f"{u}/down", [], then=503)
    upstream.script(f"{u}/busy", [Response(429, retry_after=1)], then=200)
    upstream.script(f"{u}/limited", [], then=200)
    upstream.script(f"{u}/paced", [], then=200)
    client = rig.client()
    # one call every 8 s: a second task sent once the first has called is deferred
    first = client.send_task("res.paced", args=[f"{u}/paced/0"])
    wait_until(lambda: upstream.requests(f"{u}/paced"), timeout=30, what="the first paced call")
    sent = [
        first,
        client.send_task("res.paced", args=[f"{u}/paced/1"]),
        *(client.send_task("res.limited", args=[f"{u}/limited/{i}"]) for i in range(6)),
        client.send_task("res.call", args=[f"{u}/ok"]),
        client.send_task("res.call", args=[f"{u}/flaky"]),
        client.send_task("res.call", args=[f"{u}/gone"]),
        client.send_task("res.call3", args=[f"{u}/down"]),
        client.send_task("res.call", args=[f"{u}/busy"]),
    ]
    for result in sent:
        result.get(timeout=60, propagate=False)
    after = _scrape(directory)

    def delta(metric: str, **labels: str) -> float:
        return _value(after, metric, **labels) - _value(before, metric, **labels)

    seen = Counter(r.status for r in upstream.requests() if r.path.startswith(u))
    attempts = "celery_resilience_attempts_total"
    by_verdict: Counter[str] = Counter()
    for task in ("res.call", "res.call3", "res.limited", "res.paced"):
        for verdict in ("success", "transient", "permanent", "rate_limited"):
            by_verdict[verdict] += int(delta(attempts, task=task, verdict=verdict))
    assert by_verdict == Counter(
        success=seen[200], transient=seen[503], permanent=seen[404], rate_limited=seen[429]
    )
    assert dict(by_verdict) == {"success": 11, "transient": 6, "permanent": 1, "rate_limited": 1}

    retries = "celery_resilience_retries_total"
    assert delta(retries, task="res.call") == 3  # two 503s and one 429
    assert delta(retries, task="res.call3") == 3
    assert delta("celery_resilience_gave_up_total", task="res.call3") == 1
    assert delta("celery_resilience_gave_up_total", task="res.call") == 0
    deferred = {
        task: delta(attempts, task=task, verdict="deferred")
        for task in ("res.limited", "res.paced")
    }
    assert deferred["res.paced"] >= 1
    for task, count in deferred.items():
        assert delta("celery_resilience_deferrals_total", task=task, reason="rate_limit") == count

    served = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    exposed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(served)
        for s in family.samples
    }
    key = (attempts, (("task", "res.call3"), ("verdict", "transient")))
    assert exposed[key] == _value(after, attempts, task="res.call3", verdict="transient")


@pytest.mark.integration
def test_the_breaker_gauge_follows_the_shared_state(metrics_rig: tuple[Rig, Path, int]):
    """The worker refreshes ``breaker_state`` from Redis, whoever changed the breaker."""
    rig, directory, _ = metrics_rig
    store = rig.store
    gauge = "celery_resilience_breaker_state"

    def shows(state: BreakerState) -> Any:
        return _value(_scrape(directory), gauge, name="upstream") == BREAKER_STATE_VALUES[state]

    store.breaker(CircuitBreaker("upstream"), "open")
    wait_until(lambda: shows(BreakerState.FORCED_OPEN), timeout=10, what="gauge forced open")
    store.breaker(CircuitBreaker("upstream"), "reset")
    wait_until(lambda: shows(BreakerState.CLOSED), timeout=10, what="gauge closed")
