"""Parking end to end: real workers release parked tasks, the CLI lists and releases them,
and a releaser SIGKILLed half way loses nothing.

Tasks come from :mod:`tests.apps.parking_app` (a Redis broker, so the parked set lives in
the broker's Redis, db 0, under the module's key prefix): ``park.record`` notes each run
in a Redis list, ``park.later`` parks itself through the parking API, then runs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context

from celery_resilience.integration.parking import message_for
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.parked import ParkedEntry, ParkedSet
from example_project.upstream import Upstream
from tests.helpers.cluster import module_env
from tests.helpers.inspection import run_cli
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.parking_app"


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    """The module's worker environment, with a list of its own for the runs."""
    return module_env(
        redis_server, upstream_server.url, PARK_TEST_RECORD=f"park-runs-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture
def parked(redis_server: RedisServer, env: dict[str, str]) -> Iterator[ParkedSet]:
    """The module's parked set, as the workers see it (the broker's Redis)."""
    with redis_server.client(0) as client:
        yield ParkedSet(client, KeySpace(env["RESILIENCE_TEST_PREFIX"]))


def _runs(redis_server: RedisServer, env: dict[str, str]) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        with redis_server.client(1) as client:
            return [json.loads(x) for x in client.lrange(env["PARK_TEST_RECORD"], 0, -1)]

    return read


@pytest.fixture
def runs(redis_server: RedisServer, env: dict[str, str]) -> Callable[[], list[dict[str, Any]]]:
    """Every run ``park.record`` noted so far (all tests of the module)."""
    return _runs(redis_server, env)


def _park_records(
    client: Celery, parked: ParkedSet, tags: list[str], *, delay: float, reason: Any = "backoff"
) -> list[ParkedEntry]:
    """Park one ``park.record`` per tag through the API, as a worker would, with a header
    and a priority that must survive the trip."""
    task = client.tasks.get("park.record")
    if task is None:

        @client.task(bind=True, name="park.record")
        def task(self: Any, tag: str) -> None: ...

    queue = client.conf.task_default_queue
    entries = []
    for tag in tags:
        task_id = str(uuid.uuid4())
        request = Context(
            id=task_id,
            headers={"x-test": tag},
            delivery_info={"exchange": "", "routing_key": queue, "priority": 5},
            retries=0,
            root_id=task_id,
        )
        message = message_for(task, request, (tag,), {}, {"x-test": tag})
        assert message is not None
        entries.append(
            parked.park(
                task_name="park.record",
                task_id=task_id,
                reason=reason,
                delay=delay,
                message=message,
            )
        )
    return entries


def _settled(parked: ParkedSet, task_ids: set[str]) -> bool:
    """None of these tasks is parked or claimed any more."""
    summary = parked.summary()
    waiting = {e.task_id for e in parked.entries(limit=10_000)}
    return summary.claimed == 0 and not waiting & task_ids


def test_a_task_that_parks_itself_runs_once_when_due(
    worker: CeleryWorker, client: Celery, parked: ParkedSet, runs: Any
):
    """park.later parks itself for 1.5 s: it runs once, after its due time, with its task
    ID, its headers and the id of its entry."""
    tag = f"later-{uuid.uuid4().hex[:8]}"
    sent = time.time()
    result = client.send_task("park.later", args=[tag, 1.5], headers={"x-test": "later"})
    mine = wait_until(
        lambda: [r for r in runs() if r["tag"] == tag], timeout=30, what="the parked run"
    )
    wait_until(lambda: _settled(parked, {result.id}), timeout=10, what="the entry forgotten")
    mine = [r for r in runs() if r["tag"] == tag]
    assert len(mine) == 1
    (run,) = mine
    assert run["task_id"] == result.id
    assert run["x_test"] == "later"
    assert run["first"] is True
    assert len(run["parked"]) == 32
    assert run["at"] - sent >= 1.5 - 0.05


def test_parked_entries_are_published_when_due_and_run_once(
    worker: CeleryWorker, client: Celery, parked: ParkedSet, runs: Any
):
    """Twenty entries parked through the API run once each, after their due time, with
    their task IDs, headers, priority and entry ids."""
    tags = [f"api-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    entries = _park_records(client, parked, tags, delay=0.5)
    wait_until(
        lambda: {r["tag"] for r in runs()} >= set(tags), timeout=30, what="twenty parked runs"
    )
    wait_until(
        lambda: _settled(parked, {e.task_id for e in entries}), timeout=10, what="all forgotten"
    )
    mine = [r for r in runs() if r["tag"] in set(tags)]
    assert Counter(r["tag"] for r in mine) == Counter(tags)
    by_tag = {r["tag"]: r for r in mine}
    for tag, entry in zip(tags, entries, strict=True):
        run = by_tag[tag]
        assert (run["task_id"], run["parked"], run["x_test"]) == (entry.task_id, entry.id, tag)
        assert run["priority"] == 5
        assert run["first"] is True
        assert run["at"] >= entry.due - 0.05


def _cli(env: dict[str, str], *args: str) -> Any:
    return run_cli(*args, env=env, app=APP)


def test_the_cli_lists_parked_tasks_and_releases_them(
    worker: CeleryWorker, client: Celery, parked: ParkedSet, runs: Any, env: dict[str, str]
):
    """status and parked list show three tasks parked for an hour; release --dry-run
    counts; release --id and --reason push them on, and they run."""
    tags = [f"cli-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    backoff = _park_records(client, parked, tags[:2], delay=3600)
    (breaker,) = _park_records(client, parked, tags[2:], delay=3600, reason="breaker_open")

    status = _cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)["parked"]
    assert data["count"] >= 3
    assert data["by_reason"]["breaker_open"] >= 1
    assert data["parking"] == "on"
    assert data["oldest_due_in"] is not None
    table = _cli(env, "status")
    assert "Parked:" in table.stdout, table.stdout

    listed = _cli(env, "parked", "list", "--json", "--reason", "breaker_open")
    assert listed.returncode == 0, listed.stderr
    assert breaker.id in {x["id"] for x in json.loads(listed.stdout)}
    assert all(x["reason"] == "breaker_open" for x in json.loads(listed.stdout))
    assert backoff[0].task_id in _cli(env, "parked", "list").stdout

    dry = _cli(env, "parked", "release", "--task-name", "park.record", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would release ")
    assert int(dry.stdout.split()[2]) >= 3
    assert not {r["tag"] for r in runs()} & set(tags)

    one = _cli(env, "parked", "release", "--id", backoff[0].id)
    assert one.stdout.strip() == "released 1 parked task", one.stderr
    wait_until(lambda: tags[0] in {r["tag"] for r in runs()}, timeout=30, what="the released run")
    by_reason = _cli(env, "parked", "release", "--reason", "breaker_open")
    assert by_reason.returncode == 0, by_reason.stderr
    wait_until(lambda: tags[2] in {r["tag"] for r in runs()}, timeout=30, what="breaker_open run")
    assert tags[1] not in {r["tag"] for r in runs()}
    rest = _cli(env, "parked", "release", "--all")
    assert rest.returncode == 0, rest.stderr
    wait_until(lambda: set(tags) <= {r["tag"] for r in runs()}, timeout=30, what="every run")

    usage = _cli(env, "parked", "release")
    assert usage.returncode == 2
    assert "--all" in usage.stderr
    bad = _cli(env, "parked", "release", "--id", "not-an-id")
    assert bad.returncode == 2


def test_a_releaser_killed_half_way_loses_nothing(
    redis_server: RedisServer,
    upstream_server: Upstream,
    worker_factory: Callable[..., CeleryWorker],
    celery_client: Callable[..., Celery],
):
    """A worker SIGKILLed while it releases 60 due tasks: once its claims run out another
    worker's releaser publishes the rest; every task runs, and none runs twice (a copy
    published twice is stopped by its first-delivery mark)."""
    env = module_env(
        redis_server,
        upstream_server.url,
        PARK_TEST_RECORD=f"park-kill-{uuid.uuid4().hex[:8]}",
        PARK_TEST_LEASE="2",
        PARK_TEST_POLL="0.1",
    )
    queue = env["RESILIENCE_TEST_QUEUE"]
    client = celery_client(env["RESILIENCE_TEST_BROKER"], env["RESILIENCE_TEST_BACKEND"], queue)
    runs = _runs(redis_server, env)
    with redis_server.client(0) as broker:
        parked = ParkedSet(broker, KeySpace(env["RESILIENCE_TEST_PREFIX"]))

        def published() -> int:
            return sum(broker.llen(k) for k in broker.scan_iter(match=f"{queue}*"))

        # the slow releaser: consumes another queue, so what it published stays queued
        slow = worker_factory(
            APP,
            env={**env, "PARK_TEST_SLOW_PUBLISH": "0.05"},
            queues=[f"{queue}-elsewhere"],
            concurrency=1,
        )
        tags = [f"kill-{i}-{uuid.uuid4().hex[:6]}" for i in range(60)]
        _park_records(client, parked, tags, delay=0.0)
        wait_until(lambda: published() >= 5, timeout=30, what="the slow releaser under way")
        slow.kill()
        left = parked.summary()
        assert 0 < left.count < 60, "the kill must land half way"

        worker_factory(APP, env=env, concurrency=2)
        wait_until(
            lambda: {r["tag"] for r in runs() if r["first"]} >= set(tags),
            timeout=60,
            interval=0.2,
            what="every task run",
        )
        wait_until(lambda: parked.summary().count == 0, timeout=15, what="the set emptied")
    firsts = Counter(r["tag"] for r in runs() if r["first"])
    assert firsts == Counter(tags)
    assert sum(1 for r in runs() if not r["first"]) <= 1  # the one published as A died


def test_the_worker_stats_show_the_parked_set_and_its_releaser(
    worker: CeleryWorker, client: Celery, parked: ParkedSet, runs: Any
):
    """``inspect stats``: a flat ``parked`` row set in the ``resilience`` section, with the
    counts by reason and what this node's releaser published."""
    tag = f"stats-{uuid.uuid4().hex[:8]}"
    (entry,) = _park_records(client, parked, [tag], delay=3600, reason="retry_after")
    stats = client.control.inspect(destination=[worker.nodename], timeout=5, limit=1).stats()
    rows = stats[worker.nodename]["resilience"]["parked"]
    assert rows["releaser"] == "running"
    assert rows["retry_after"] >= 1
    assert rows["count"] >= 1
    assert rows["durable"] is True
    assert rows["oldest_due_in"] is not None
    assert {"published", "republished", "publish_errors", "store_errors"} <= set(rows)
    assert all(not isinstance(value, (dict, list)) for value in rows.values())
    parked.release_now(ids=[entry.id])
    wait_until(lambda: tag in {r["tag"] for r in runs()}, timeout=30, what="the released run")
