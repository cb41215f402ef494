"""Per-key breakers and limits end to end: hostile keys against a real Redis, and a
keyed breaker on real workers that opens for one tenant only.

Tasks come from :mod:`tests.apps.resilient`: ``res.per_tenant`` (breaker 'tenants', one
per ``tenant`` keyword, opening after three failures for 60 s).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_resilience.cli import render_status
from celery_resilience.core.gates import BreakerState, GateAsk, OutcomeReport
from celery_resilience.core.keying import key_text
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Upstream
from tests.helpers.cluster import (
    calls_under,
    client_for,
    note,
    running_nodes,
    transitions_env,
    wait_all,
)
from tests.helpers.inspection import run_cli
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

MAX_KEYS = 50
#: Distinct hostile keys driven through the gate, a batch per pipeline-free loop.
HOSTILE = 100_000


def _raw_key(i: int) -> object:
    """Key function results an attacker controls: long text, binary, markup, plain."""
    kinds: list[object] = [
        f"tenant-{i}",
        b"\xff\x00{" + i.to_bytes(4, "big") + b"}\r\n",
        "x" * 5000 + str(i),
        f"<b>{i}</b> ../ %00 {{tag}}:*",
    ]
    return kinds[i % len(kinds)]


def _tenant(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    return kwargs["tenant"]


def test_hostile_keys_keep_redis_bounded(redis_server: RedisServer):
    """10^5 distinct keys (long, binary, markup) through a keyed breaker, rate limit and
    concurrency limit with max_keys=50: no error, every key bounded and escaped, and
    Redis holds at most the cap's worth of keys (3 breaker keys per live key plus one
    per limit, the overflow states and the registries), far below one per key."""
    client = redis_server.client(4)
    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    store = RedisStore(client, KeySpace(prefix))
    breaker = CircuitBreaker("h", key=_tenant, max_keys=MAX_KEYS, minimum_calls=1000)
    limiter = RateLimit("h", "1000000/s", key=_tenant, max_keys=MAX_KEYS)
    pool = ConcurrencyLimit("h", 5, key=_tenant, max_keys=MAX_KEYS)
    overflowed = 0
    try:
        for i in range(HOSTILE):
            key = key_text(_tenant, (), {"tenant": _raw_key(i)})
            assert len(key) <= 64
            holder = f"t{i}"
            if i % 25 == 0:  # the full gate now and then; the registry path every time
                ask = GateAsk(
                    holder=holder,
                    breaker=breaker.bind(key),
                    limiter=limiter.bind(key),
                    concurrency=pool.bind(key),
                    concurrency_lease=30.0,
                )
                answer = store.gate(ask)
                overflowed += "b" in answer.overflow
                store.record(
                    OutcomeReport(holder=holder, breaker=ask.breaker, concurrency=ask.concurrency)
                )
            else:
                answer = store.gate(GateAsk(holder=holder, limiter=limiter.bind(key)))
            assert answer.denial is None or answer.allowed is False
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        bound = (3 + 1 + 1) * MAX_KEYS + 3 + 1 + 1 + 3 * 2
        assert len(keys) <= bound, (len(keys), bound)
        for kind in ("breaker", "limiter", "concurrency"):
            status = store.keys_status(kind, "h")
            assert status.live <= MAX_KEYS
            assert status.overflow > 0
        assert overflowed > 0
        assert all(k.isprintable() and " " not in k and "\n" not in k for k in keys)
    finally:
        for k in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(k)
        client.close()


# -- on real workers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    """This module's worker environment; breaker transitions are counted in a list."""
    return transitions_env(redis_server, upstream_server.url)


@pytest.fixture(scope="module")
def nodes(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CeleryWorker]]:
    """Two worker nodes of 2 processes each."""
    with running_nodes(env, tmp_path_factory.mktemp("workers"), nodes=2, concurrency=2) as w:
        yield w


def test_a_keyed_breaker_opens_for_one_tenant_only(
    nodes, env, celery_client, upstream, redis_server
):
    """Tenant 'bad' sees its upstream fail: its breaker opens and its later tasks are not
    sent; tenant 'good' behind the same declaration keeps calling, and every task of it
    succeeds. The transition names the key; status shows both keys."""
    run = uuid.uuid4().hex[:8]
    upstream.script(f"/bad-{run}", [], then=503)
    client = client_for(celery_client, env)
    task = client.signature("res.per_tenant")
    store = RedisStore(redis_server.client(2), KeySpace(env["RESILIENCE_TEST_PREFIX"]))
    for i in range(3):
        task.clone(args=(f"/bad-{run}/{i}",), kwargs={"tenant": "bad"}).delay()
    wait_until(
        lambda: store.keys_status("breaker", "tenants").open == 1,
        timeout=60,
        what="the failing tenant's breaker open",
    )
    later = [
        task.clone(args=(f"/bad-{run}/x{i}",), kwargs={"tenant": "bad"}).delay() for i in range(3)
    ]
    good = [
        task.clone(args=(f"/good-{run}/{i}",), kwargs={"tenant": "good"}).delay() for i in range(6)
    ]
    wait_all(good, timeout=60, what="the healthy tenant's tasks")
    assert [r.state for r in good] == ["SUCCESS"] * 6
    status = store.keys_status("breaker", "tenants")
    assert status.live == 2
    assert status.open == 1
    sent_later = [r for r in upstream.requests() if r.path.startswith(f"/bad-{run}/x")]
    assert sent_later == []  # the open breaker of 'bad' sent none of them
    for r in later:
        r.forget()
    results = redis.Redis.from_url(env["RESILIENCE_TEST_BACKEND"])
    noted = results.lrange(env["RESILIENCE_TEST_TRANSITIONS"], 0, -1)
    results.close()
    transitions = [json.loads(x) for x in noted]
    assert {(t["name"], t.get("key"), t["new"]) for t in transitions} >= {
        ("tenants", "bad", BreakerState.OPEN.value)
    }
    assert not any(t.get("key") == "good" for t in transitions)
    shown = run_cli("status", "--json", env=env, app="tests.apps.resilient")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    row = next(b for b in data["breakers"] if b["name"] == "tenants")
    assert row["keys"]["live"] == 2
    assert row["keys"]["open"] == 1
    assert {t["key"] for t in row["keys"]["top"]} == {"bad", "good"}
    table = render_status(data).splitlines()
    keys_at = next(i for i, line in enumerate(table) if line.startswith("Keys ("))
    rows = [line.split() for line in table[keys_at + 2 :] if line.startswith("breaker ")]
    assert [r[:5] for r in rows] == [["breaker", "tenants", "2/1000", "0", "1"]]
    store.client.close()


#: Tasks of each tenant; the third sends ten times as many.
FAIR_BACKLOG = {"a": 160, "b": 160, "c": 1600}
#: The steady window measured: from 6 s after the first call (the first deferrals of the
#: whole backlog are behind), for 8 s (every tenant still has work: a and b have 16 s).
STEADY_FROM, STEADY_FOR = 6.0, 8.0


def test_each_tenant_gets_its_own_rate(nodes, env, celery_client, upstream, request):
    """Three tenants behind RateLimit('fair', '10/s', key=tenant) on 2 worker nodes, one
    with ten times the backlog of the others: over a steady 8 s window each tenant's
    calls reach the upstream at 10/s within 5 %: the busy tenant neither slows the others
    nor gets more, and every task of the others is done at their own rate, none left
    behind the busy tenant's backlog."""
    run = uuid.uuid4().hex[:8]
    client = client_for(celery_client, env)
    task = client.signature("res.fair")
    for i in range(max(FAIR_BACKLOG.values())):  # interleaved, as arrivals would be
        for tenant, count in FAIR_BACKLOG.items():
            if i < count:
                task.clone(args=(f"/fair-{run}/{tenant}/{i}",), kwargs={"tenant": tenant}).delay()

    def calls(tenant: str) -> list[float]:
        return sorted(r.start for r in calls_under(upstream, f"/fair-{run}/{tenant}"))

    first = wait_until(
        lambda: min((calls(t) or [0.0])[0] for t in FAIR_BACKLOG) or None,
        timeout=60,
        what="a first call of every tenant",
    )
    start = first + STEADY_FROM
    wait_until(
        lambda: all(any(t >= start + STEADY_FOR for t in calls(x)) for x in FAIR_BACKLOG),
        timeout=60,
        what="every tenant called past the steady window",
    )
    small = ("a", "b")
    wait_until(
        lambda: all(len(calls(t)) >= FAIR_BACKLOG[t] for t in small),
        timeout=90,
        what="every task of a and b called",
    )
    rates = {
        tenant: sum(1 for t in calls(tenant) if start <= t < start + STEADY_FOR) / STEADY_FOR
        for tenant in FAIR_BACKLOG
    }
    busy = calls("c")
    client.control.purge()
    note(request, **{f"rate_{tenant}": rate for tenant, rate in rates.items()})
    assert all(abs(rate - 10.0) <= 0.5 for rate in rates.values()), rates
    # no task of a or b waits behind c's backlog (a deferral goes to the back of the
    # queue): the last of them is called about when c has made as many calls, not after
    last_small = max(max(calls(t)) for t in small)
    busy_before = sum(1 for t in busy if t < last_small)
    assert busy_before <= FAIR_BACKLOG["a"] + 40, (busy_before, last_small - first)
