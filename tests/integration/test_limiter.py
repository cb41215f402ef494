"""The rate limiter shared through Redis: racing processes, then real workers.

Two clocks are in play. The limiter decides on the Redis server's clock, and those
decisions must be exact whatever the load of the machine: they are checked on the times
the scripts return (with workers, on the times ``MONITOR`` shows for the gate of each
task's successful attempt). The upstream sees each call a little later, after a delay
that belongs to the worker's scheduling (up to a fifth of a second on a loaded machine),
so a 1-second window there can hold one call more than the limiter granted in any
second; its figure is reported, not judged. At the upstream the steady rate is measured
as the median gap between consecutive calls: a call that comes late lengthens one gap
and shortens the next, and a slot that a woken task came too late for makes one gap of
two intervals; neither moves the median.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import re
import statistics
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_resilience.core.limits import RateLimit
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from celery_resilience.state.scripts import script_source
from example_project.upstream import Response
from tests.helpers import racers
from tests.helpers.cluster import note, running_nodes, wait_all, windows
from tests.helpers.monitor import Command, CommandLog, script_sha
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import HOST, RedisServer
from tests.helpers.workers import CeleryWorker, deliveries

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")
TAKERS = 8
RATE = 50.0
SECONDS = 5.0


# -- 8 processes on one limiter -------------------------------------------------------------


def _decisions(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Replay one process's answers: the limiter's decisions (a grant at once, or a slot
    booked), the grants, and the booked slots granted (however late they were presented)."""
    out: dict[str, list[Any]] = {"decided": [], "granted": [], "used": [], "booked": []}
    for event in events:
        at, slot, presented = event["at"], event["slot"], event["presented"]
        if event["ok"]:
            out["granted"].append(at)
            if presented is not None:
                out["used"].append(presented)
            else:
                out["decided"].append(at)
        elif slot is not None and slot != presented:
            out["decided"].append(slot)
            out["booked"].append(slot)
    return out


@pytest.fixture(scope="module", params=[None, 10], ids=["burst=1", "burst=10"])
def race(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """8 processes take from one 50/s limiter for 5 s; what the limiter decided."""
    burst = request.param
    limiter = {"name": "race", "rate": f"{RATE:g}/s", "burst": burst}
    out = tmp_path_factory.mktemp("takers")
    prefix = f"limit-{uuid.uuid4().hex[:10]}"
    barrier = SPAWN.Barrier(TAKERS)
    processes = [
        SPAWN.Process(
            target=racers.take_slots,
            args=(redis_server.url(3), prefix, limiter, i, barrier, SECONDS + 0.5, str(out)),
        )
        for i in range(TAKERS)
    ]
    racers.run_all(processes, timeout=60)
    policy = RateLimit(**limiter)
    merged: dict[str, list[Any]] = {"decided": [], "granted": [], "used": [], "booked": []}
    for path in out.glob("*.json"):
        for key, values in _decisions(json.loads(path.read_text())).items():
            merged[key].extend(values)
    return {"policy": policy, **merged}


def test_limiter_decides_rate_times_time_plus_burst(race, request):
    """In 5 s of the Redis clock from its first decision, a contended 50/s limiter hands
    out 250 slots plus its burst, within 2 %, whatever the load of the machine; no more
    calls than that are granted."""
    policy: RateLimit = race["policy"]
    start = min(race["decided"])
    decided = sum(1 for t in race["decided"] if start <= t < start + SECONDS)
    granted = sum(1 for t in race["granted"] if start <= t < start + SECONDS)
    expected = RATE * SECONDS + policy.capacity
    note(request, decided=decided, granted=granted)
    assert abs(decided - expected) <= 0.02 * expected, (decided, expected)
    assert granted <= decided


def test_no_second_holds_more_grants_than_rate_plus_burst(race, request):
    """Over every 1-second window of the Redis clock, at most 50 + burst grants."""
    policy: RateLimit = race["policy"]
    worst = windows(race["granted"])
    note(request, worst_window=worst)
    assert worst <= RATE + policy.capacity


def test_every_booked_slot_is_granted_once_however_late(race, request):
    """A slot booked for a process is granted to it exactly once: on time, or (when the
    process comes late) as soon as the spacing of grants allows, never twice and never
    lost; so the grants are exactly the decisions."""
    used, booked = race["used"], race["booked"]
    note(request, late_or_on_time=len(used))
    assert len(set(used)) == len(used)
    assert set(used) == set(booked)
    assert len(race["granted"]) == len(race["decided"])


# -- real workers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CeleryWorker]]:
    """2 worker nodes of 2 processes each, shared by this module's end-to-end tests."""
    with running_nodes(env, tmp_path_factory.mktemp("workers"), nodes=2, concurrency=2) as w:
        yield w


@pytest.fixture
def store(redis_server: RedisServer, env: dict[str, str]) -> Iterator[RedisStore]:
    """The workers' state store, as a test reads it."""
    client = redis_server.client(2)
    yield RedisStore(client, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
    client.close()


@pytest.fixture
def scripts_loaded(redis_server: RedisServer) -> None:
    """The gate and record scripts are in the server's cache, so that every EVALSHA runs
    at the first try (a cold cache costs one failed EVALSHA and a SCRIPT LOAD)."""
    with redis_server.client(2) as client:
        for name in ("gate", "record"):
            client.script_load(script_source(name))


def _grants(commands: list[Command]) -> dict[str, float]:
    """Each task's grant on the Redis clock: the last gate it asked before its record."""
    gate, record = script_sha("gate"), script_sha("record")
    asked: dict[str, float] = {}
    grants: dict[str, float] = {}
    for command in commands:
        found = re.search(r":attempt:\{([^}]+)\}:", command.args)
        if found is None:
            continue
        if command.sha == gate:
            asked[found[1]] = command.time
        elif command.sha == record:
            assert found[1] not in grants, f"two attempts of {found[1]} ran"
            grants[found[1]] = asked[found[1]]
    return grants


def test_two_nodes_call_the_upstream_at_the_limit(
    nodes, client, upstream, unique, redis_server, scripts_loaded, request
):
    """RateLimit("api", "10/s") on 2 nodes x 2 processes, 200 tasks: every task succeeds
    with one call; the steady rate at the upstream is 10/s within 5 %, never faster on
    the whole, and no 1-second window holds more than 10 + burst grants."""
    prefix = f"/{unique}/rate"
    upstream.script(prefix, [], then=200)
    with CommandLog(HOST, redis_server.port) as log:
        results = [client.send_task("res.limited", args=[f"{prefix}/{i}"]) for i in range(200)]
        states = wait_all(results, timeout=90, what="200 rate-limited tasks")
        wait_until(
            lambda: len(_grants(log.commands(db=2, containing=":attempt:{"))) == 200,
            timeout=10,
            what="MONITOR to show every grant",
        )
        grants = _grants(log.commands(db=2, containing=":attempt:{"))

    assert states == ["SUCCESS"] * 200
    assert set(grants) == {r.id for r in results}
    arrivals = sorted(r.start for r in upstream.requests(prefix))
    assert len(arrivals) == 200
    steady = 1 / statistics.median(b - a for a, b in itertools.pairwise(arrivals))
    overall = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    note(
        request,
        steady_rate=round(steady, 3),
        overall_rate=round(overall, 3),
        worst_grant_window=windows(list(grants.values())),
        worst_upstream_window=windows(arrivals),
    )
    assert steady == pytest.approx(10.0, rel=0.05)
    assert overall <= 10.0 * 1.05
    assert windows(list(grants.values())) <= 10 + RateLimit("api", "10/s").capacity


def test_a_backlog_behind_the_limit_is_delivered_about_once(
    nodes, client, upstream, unique, request
):
    """200 tasks behind RateLimit("api", "10/s") on 2 nodes x 2 processes: the consumers
    reserve each task's slot as it arrives and hold it until then, so a task is delivered
    about once (not once to book a slot and once more to use it), and none twice in a row
    for the limiter once it is known to be full."""
    prefix = f"/{unique}/once"
    upstream.script(prefix, [], then=200)
    results = [client.send_task("res.limited", args=[f"{prefix}/{i}"]) for i in range(200)]
    assert wait_all(results, timeout=90, what="200 rate-limited tasks") == ["SUCCESS"] * 200

    seen = deliveries(nodes, "res.limited", {r.id for r in results})
    per_task = sum(seen.values()) / len(seen)
    note(request, deliveries_per_task=round(per_task, 3), most=max(seen.values()))
    assert min(seen.values()) >= 1
    assert per_task <= 1.2
    assert upstream.count(prefix) == 200


def test_429_pauses_the_limiter_for_every_worker(nodes, client, upstream, unique, store):
    """A 429 with Retry-After: 3 pauses the limiter 'api' for the cluster: neither the
    throttled task nor 5 other tasks of that limiter call the upstream before the pause
    (3 s after the 429 was recorded) is over."""
    upstream.script(f"/{unique}/throttled", [Response(429, retry_after=3)], then=200)
    upstream.script(f"/{unique}/other", [], then=200)
    policy = RateLimit("api", "10/s")
    throttled = client.send_task("res.limited", args=[f"/{unique}/throttled"])
    status = wait_until(
        lambda: (s := store.limiter(policy, None, "api")).paused_until > s.now and s,
        timeout=20,
        what="the limiter to be paused",
    )
    others = [client.send_task("res.limited", args=[f"/{unique}/other/{i}"]) for i in range(5)]

    assert wait_all([throttled, *others], timeout=30, what="6 tasks") == ["SUCCESS"] * 6
    calls = upstream.requests(f"/{unique}/throttled") + upstream.requests(f"/{unique}/other")
    first, *later = sorted(calls, key=lambda r: r.start)
    assert first.status == 429
    assert len(later) == 6
    assert status.paused_until >= first.start + 3.0
    assert min(r.start for r in later) >= status.paused_until


def test_breaker_and_limiter_are_asked_in_one_round_trip(
    nodes, client, upstream, unique, redis_server, env, scripts_loaded
):
    """A task with a breaker and a limiter costs the state store exactly two commands for
    one attempt: one EVALSHA of the gate (breaker and limiter keys together) before the
    body and one EVALSHA of the record after it."""
    prefix = env["RESILIENCE_TEST_PREFIX"]

    with CommandLog(HOST, redis_server.port) as log:
        result = client.send_task("res.both", args=[f"/{unique}/counted"])
        assert wait_all([result], timeout=20, what="the counted task") == ["SUCCESS"]
        # the result is stored after the outcome is recorded: once MONITOR has shown the
        # result, it has shown every state-store command of the attempt
        wait_until(
            lambda: log.commands(db=1, containing=f"celery-task-meta-{result.id}"),
            timeout=10,
            what="MONITOR to show the stored result",
        )
        commands = log.commands(db=2, containing=result.id)

    assert [c.sha for c in commands] == [script_sha("gate"), script_sha("record")]
    gate, record = commands
    assert f"{prefix}:breaker:{{both}}:state" in gate.args
    assert f"{prefix}:limiter:{{both}}" in gate.args
    assert f"{prefix}:breaker:{{both}}:state" in record.args
