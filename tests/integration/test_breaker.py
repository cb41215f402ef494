"""The circuit breaker shared through Redis, end to end: real workers, a real upstream.

The outage scenario runs once per module (it lasts as long as its 20 s outage) and
several tests read what it did. Tasks behind the breaker come from
:mod:`tests.apps.resilient`: ``res.guarded`` (breaker 'upstream': 5 calls, rate 0.5,
open 2 s, max_retries=8), ``res.manual`` (max_retries=0) and ``res.manual_deadline``
(deadline 3 s), whose breakers the tests force open. The policy's other checks are
specified in ``test_policy.py``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Upstream
from tests.helpers.celery_apps import make_app
from tests.helpers.cluster import (
    calls_under,
    client_for,
    log_lines,
    module_env,
    note,
    running_nodes,
    transitions_env,
    wait_all,
)
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

TASKS = 200
OUTAGE = 20.0
#: The breaker of res.guarded, as the workers know it.
GUARDED = CircuitBreaker("upstream", minimum_calls=5, open_for=2.0)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    """This module's worker environment; breaker transitions are counted in a list."""
    return transitions_env(redis_server, upstream_server.url)


@pytest.fixture(scope="module")
def nodes(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CeleryWorker]]:
    """2 worker nodes of 2 processes each, shared by this module's tests."""
    with running_nodes(env, tmp_path_factory.mktemp("workers"), nodes=2, concurrency=2) as w:
        yield w


@pytest.fixture(scope="module")
def state(redis_server: RedisServer, env: dict[str, str]) -> Iterator[RedisStore]:
    """The workers' state store, as a test reads and drives it."""
    client = redis_server.client(2)
    yield RedisStore(client, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
    client.close()


# -- the outage ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outage(
    nodes: list[CeleryWorker],
    env: dict[str, str],
    upstream_server: Upstream,
    redis_server: RedisServer,
) -> dict[str, Any]:
    """200 res.guarded tasks against an upstream that answers 503 for 20 s, then 200."""
    prefix = f"/{env['RESILIENCE_TEST_PREFIX']}/outage"
    app = make_app(
        "outage-client",
        broker=env["RESILIENCE_TEST_BROKER"],
        backend=env["RESILIENCE_TEST_BACKEND"],
        queue=env["RESILIENCE_TEST_QUEUE"],
        set_as_current=False,
    )
    try:
        recovery = time.time() + OUTAGE
        upstream_server.phases(prefix, [(OUTAGE, 503), (None, 200)])
        results = [app.send_task("res.guarded", args=[f"{prefix}/{i}"]) for i in range(TASKS)]
        states = wait_all(results, timeout=OUTAGE + 60, what=f"{TASKS} guarded tasks")
        ledgers = [json.loads(r.result["ledger"] or "{}") for r in results if r.successful()]
    finally:
        app.close()
    with redis_server.client(1) as backend:
        raw = backend.lrange(env["RESILIENCE_TEST_TRANSITIONS"], 0, -1)
    return {
        "recovery": recovery,
        "states": states,
        "ledgers": ledgers,
        "calls": upstream_server.requests(prefix),
        "transitions": [json.loads(t) for t in raw],
        "pool": {pid for node in nodes for pid in node.child_pids()},
    }


@pytest.mark.integration
def test_every_task_succeeds_after_the_outage(outage, request):
    """Every one of the 200 tasks succeeds, each with exactly one successful call, none
    spending more than its 8 retries; all are done within 15 s of the recovery."""
    assert outage["states"] == ["SUCCESS"] * TASKS
    ok = [c for c in outage["calls"] if c.status == 200]
    assert Counter(c.path for c in ok) == dict.fromkeys({c.path for c in ok}, 1)
    assert len(ok) == TASKS
    assert max(ledger.get("f", 0) for ledger in outage["ledgers"]) <= 8
    done = sorted(c.end - outage["recovery"] for c in ok)
    note(request, last_done=round(done[-1], 2), median_done=round(statistics.median(done), 2))
    assert done[0] >= 0
    assert done[-1] <= 15.0


@pytest.mark.integration
def test_the_breaker_spares_the_upstream_during_the_outage(outage, nodes, request):
    """The breaker opens once, so that the upstream sees far fewer calls than tasks while
    it is down (a handful before it opens, then one probe per half-open); it closes once,
    after the recovery, and the workers' logs say so."""
    failed = [c for c in outage["calls"] if c.status == 503]
    note(request, calls_during_outage=len(failed))
    assert len(failed) <= 40
    assert len(log_lines(nodes, "breaker 'upstream': closed -> open")) == 1
    assert len(log_lines(nodes, "breaker 'upstream': half_open -> closed")) == 1
    assert len(log_lines(nodes, "breaker 'upstream': open -> half_open")) >= OUTAGE / 4


@pytest.mark.integration
def test_breaker_state_changed_is_sent_once_per_transition(outage, nodes):
    """Each transition is signalled once, by the pool process whose script made it: one
    CLOSED -> OPEN, one HALF_OPEN -> CLOSED, and each re-open follows one half-open; the
    signals match the transitions logged."""
    kinds = Counter((t["old"], t["new"]) for t in outage["transitions"])
    assert {t["name"] for t in outage["transitions"]} == {"upstream"}
    assert kinds[("closed", "open")] == 1
    assert kinds[("half_open", "closed")] == 1
    assert kinds[("open", "half_open")] == kinds[("half_open", "open")] + 1
    assert set(kinds) == {
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("half_open", "closed")
    }  # fmt: skip
    for (old, new), count in kinds.items():
        assert len(log_lines(nodes, f"breaker 'upstream': {old} -> {new}")) == count
    assert {t["pid"] for t in outage["transitions"]} <= outage["pool"]


#: The breaker of res.steady (no retries), as the workers know it.
STEADY = CircuitBreaker(
    "steady", minimum_calls=5, window=10.0, open_for=30.0, confidence=0.5, throttle=None
)


@pytest.mark.integration
def test_an_outage_opens_the_breaker_within_one_window(
    redis_server, upstream, celery_client, unique, tmp_path
):
    """Successes are counted late (each pool process holds its own for at most about
    0.1 s, as every attempt without a lease does) but all of them, once; then an outage
    opens the breaker across two nodes of two processes within one window, on exactly the
    failure that brings the rate to 0.5: 20 failures after 20 successes, 40 calls."""
    env = module_env(redis_server, upstream.url, RESILIENCE_TEST_GUARD="acks_late")
    client = client_for(celery_client, env)
    with (
        redis_server.client(2) as raw,
        running_nodes(env, tmp_path, nodes=2, concurrency=2) as nodes,
    ):
        state = RedisStore(raw, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
        healthy = [client.send_task("res.steady", args=[f"/{unique}/ok/{i}"]) for i in range(20)]
        assert wait_all(healthy, timeout=30, what="20 steady tasks") == ["SUCCESS"] * 20
        wait_until(
            lambda: state.breaker(STEADY).calls == 20, timeout=5, what="20 successes counted"
        )

        upstream.phases(f"/{unique}/down", [(None, 503)])
        down = [client.send_task("res.steady", args=[f"/{unique}/down/{i}"]) for i in range(20)]
        wait_until(
            lambda: state.breaker(STEADY).state.value == "open",
            timeout=STEADY.window,
            what="the breaker open within one window",
        )
        assert wait_all(down, timeout=30, what="20 failing tasks") == ["FAILURE"] * 20
        (line,) = log_lines(nodes, "breaker 'steady': closed -> open")

    assert "failure rate 0.50 over 40 calls" in line
    assert len(calls_under(upstream, f"/{unique}/down")) == 20


# -- deferral, retries and the deadline ------------------------------------------------------


@pytest.mark.integration
def test_deferrals_do_not_spend_retries(nodes, client, upstream, unique, state):
    """A task allowed no retry at all (max_retries=0), deferred again and again by a
    breaker forced open, still runs once the breaker is reset, and succeeds."""
    policy = CircuitBreaker("manual", open_for=0.5)
    state.breaker(policy, "open")
    try:
        result = client.send_task("res.manual", args=[f"/{unique}/manual"])
        needle = f"[{result.id}]: deferred: breaker 'manual' forced open"
        wait_until(lambda: len(log_lines(nodes, needle)) >= 3, timeout=20, what="three deferrals")
    finally:
        state.breaker(policy, "reset")

    outcome = result.get(timeout=20)
    ledger = json.loads(outcome["ledger"])
    assert outcome["status"] == 200
    assert ledger["f"] == 0
    assert ledger["d"] >= 3
    assert len(calls_under(upstream, f"/{unique}")) == 1


@pytest.mark.integration
def test_the_deadline_bounds_a_deferred_task(nodes, client, upstream, unique, state):
    """A task with a 3 s deadline whose breaker stays forced open gives up (GaveUp) when
    its next deferral would end past the deadline, without calling the upstream.

    A deferral that ends just before the deadline may be delivered just after it on a
    loaded machine; the task then gives up on arrival, and says the deadline passed."""
    policy = CircuitBreaker("manual-deadline", open_for=0.5)
    state.breaker(policy, "open")
    try:
        started = time.monotonic()
        result = client.send_task("res.manual_deadline", args=[f"/{unique}/late"])
        gave_up = r"deadline of 3 s (would pass while deferred|passed)"
        with pytest.raises(Exception, match=gave_up) as info:
            result.get(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        state.breaker(policy, "reset")

    assert type(info.value).__name__ == "GaveUp"
    if "would pass while deferred" in str(info.value):
        assert "breaker 'manual-deadline' forced open" in str(info.value)
    needle = f"[{result.id}]: deferred: breaker 'manual-deadline' forced open"
    wait_until(lambda: log_lines(nodes, needle), timeout=10, what="a deferral by the breaker")
    assert 2.0 <= elapsed <= 8.0
    assert len(calls_under(upstream, f"/{unique}")) == 0


# -- Redis unreachable -----------------------------------------------------------------------


def _unreachable_env(
    redis_server: RedisServer, upstream: Upstream, port: int, mode: str
) -> dict[str, str]:
    return module_env(
        redis_server,
        upstream.url,
        RESILIENCE_TEST_STATE=f"redis://127.0.0.1:{port}/0",
        RESILIENCE_TEST_FALLBACK=mode,
    )


@pytest.mark.integration
def test_unreachable_state_store_fails_open_and_says_so_once(
    worker_factory, celery_client, redis_server, upstream, unique
):
    """With nothing listening where the state store should be, 10 tasks, half behind a
    breaker and half behind a rate limit, all succeed (per-process state, fail-open), and
    the worker logs the fallback once, not once per task."""
    env = _unreachable_env(redis_server, upstream, free_port(), "allow")
    worker = worker_factory("tests.apps.resilient", env=env, concurrency=1)
    client = client_for(celery_client, env)

    results = [
        client.send_task(name, args=[f"/{unique}/{name}/{i}"])
        for name in ("res.guarded", "res.limited")
        for i in range(5)
    ]

    assert wait_all(results, timeout=30, what="10 tasks") == ["SUCCESS"] * 10
    (warning,) = log_lines([worker], "unreachable")
    assert "fail-open" in warning
    assert len(calls_under(upstream, f"/{unique}")) == 10


@pytest.mark.integration
def test_unreachable_state_store_defers_when_told_to(
    worker_factory, celery_client, redis_server, upstream, unique, tmp_path
):
    """With resilience_fallback="defer", a task waits (RETRY, "state store unreachable")
    instead of running; once a Redis answers there, it runs and succeeds."""
    port = free_port()
    env = _unreachable_env(redis_server, upstream, port, "defer")
    worker = worker_factory("tests.apps.resilient", env=env, concurrency=1)
    client = client_for(celery_client, env)

    result = client.send_task("res.guarded", args=[f"/{unique}/deferred"])
    wait_until(lambda: result.state == "RETRY", timeout=20, what="the task to be deferred")
    assert "state store unreachable" in str(result.info)
    assert len(calls_under(upstream, f"/{unique}")) == 0

    with RedisServer(tmp_path / "late-redis", port=port):
        assert result.get(timeout=20)["status"] == 200
    assert log_lines([worker], "answers again")
