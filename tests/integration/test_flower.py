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
from tests.helpers.chromium import dump_dom, find_chromium
from tests.helpers.flower import FlowerProcess, other_rows, other_tab_shown
from tests.helpers.inspection import APP, ODD_NAME, Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Rig, FlowerProcess]]:
    """One worker sending events (-E) and one Flower watching it, for the module; the app
    also declares a breaker whose name needs escaping."""
    logs = tmp_path_factory.mktemp("flower")
    odd = {"RESILIENCE_TEST_ODD_NAME": "1"}
    with (
        worker_rig(redis_server, upstream_server, logs, extra_args=["-E"], extra_env=odd) as rig,
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
    assert stats[worker.worker.nodename]["resilience: store"].endswith(", reachable")

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
    rows = stats[rig.worker.nodename]
    assert "UNREACHABLE (ConnectionError: " in rows["resilience: store"]
    assert rows["resilience: fallback"].startswith("ACTIVE (mode allow); ")


def test_the_rows_can_stand_alone(redis_server: RedisServer, upstream: Upstream, tmp_path: Path):
    """With ``resilience_stats_section = False`` the stats hold the rows, not the section."""
    env = {"RESILIENCE_TEST_STATS_SECTION": "0"}
    with worker_rig(redis_server, upstream, tmp_path, extra_env=env) as rig:
        client = rig.client()
        stats = client.control.inspect(destination=[rig.worker.nodename], timeout=5).stats()
    node = stats[rig.worker.nodename]
    assert "resilience" not in node
    assert node["resilience: breaker 'upstream'"].startswith("closed; failure rate ")
    assert node["resilience: store"].endswith(", reachable")


#: The breaker name as the rows show it: spaces and non-ASCII escaped, markup as text.
ODD_SHOWN = "resilience: breaker 'legacy\\x20caf\\xe9\\x20<b>x</b>'"


def _rows_shown(flower: FlowerProcess, nodename: str) -> dict[str, str] | None:
    """The worker page's "Other" rows, once they show the pinned odd breaker."""
    rows = other_rows(flower.page(f"/worker/{nodename}"))
    return rows if rows.get(ODD_SHOWN, "").startswith("forced open") else None


@pytest.fixture
def odd_pinned(rig: tuple[Rig, FlowerProcess]) -> Iterator[None]:
    """The oddly named breaker pinned open for the test, reset after it."""
    store = rig[0].store
    store.breaker(CircuitBreaker(ODD_NAME), "open")
    try:
        yield
    finally:
        store.breaker(CircuitBreaker(ODD_NAME), "reset")


def _check_rows(rows: dict[str, str]) -> None:
    """Breaker states, limiter waits and pauses, outcomes, parked set, fallback, store."""
    assert rows["resilience: breaker 'upstream'"].startswith("closed; failure rate ")
    assert rows["resilience: breaker 'inspect-outage'"].startswith("closed; failure rate ")
    assert rows[ODD_SHOWN] == (
        "forced open (until `resilience breaker reset`); failure rate 0% over 0 calls"
    )
    assert re.fullmatch(
        r"10/s; (no wait|a call now waits [0-9.]+ s); not paused; "
        r"[0-9]+ of 3 concurrency slots in use",
        rows["resilience: limiter 'api'"],
    ), rows["resilience: limiter 'api'"]
    assert re.fullmatch(
        r"[0-9]+ attempts: [0-9]+ succeeded, [0-9]+ failed, [0-9]+ retries, "
        r"[0-9]+ deferrals, [0-9]+ gave up",
        rows["resilience: outcomes"],
    ), rows["resilience: outcomes"]
    assert re.fullmatch(
        r"[0-9]+( \(.*\))?, [0-9]+ claimed, .*; in .* \(durable\)", rows["resilience: parked"]
    ), rows["resilience: parked"]
    assert rows["resilience: releaser"].startswith("running: published ")
    assert rows["resilience: fallback"] == (
        "off (mode allow); 0 gate answers from per-process state"
    )
    assert rows["resilience: store"].endswith(", reachable")


def test_the_worker_page_shows_named_rows(rig: tuple[Rig, FlowerProcess], odd_pinned: None):
    """Flower's worker page, tab Other: one named row of words per breaker, limiter,
    outcome count, parked set, releaser, fallback and store; names escaped in the HTML."""
    worker, flower = rig
    nodename = worker.worker.nodename
    rows = wait_until(
        lambda: flower.get("/api/workers", refresh=1) and _rows_shown(flower, nodename),
        timeout=20,
        what="the worker page with the pinned breaker",
    )
    _check_rows(rows)
    html = flower.page(f"/worker/{nodename}")
    assert "<b>x</b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html


def test_a_browser_shows_the_rows(rig: tuple[Rig, FlowerProcess], odd_pinned: None, tmp_path: Path):
    """Headless Chromium renders the worker page with the Other tab open and the rows in it."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium (apt-get install chromium, or set CHROMIUM to its path)")
    worker, flower = rig
    nodename = worker.worker.nodename
    wait_until(
        lambda: flower.get("/api/workers", refresh=1) and _rows_shown(flower, nodename),
        timeout=20,
        what="the worker page with the pinned breaker",
    )
    dom = dump_dom(chromium, f"{flower.url}/worker/{nodename}#tab-other", profile=tmp_path)
    assert other_tab_shown(dom)
    _check_rows(other_rows(dom))
