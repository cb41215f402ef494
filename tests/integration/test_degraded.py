"""A degraded upstream, end to end: real workers, a real upstream, a breaker of defaults.

``res.degraded`` sits behind ``CircuitBreaker("degraded")`` with every default: the
breaker opens on evidence (``confidence``) and sheds the excess while too few calls are
accepted (``throttle``). The upstream's random failures are seeded, so every run sees the
same answers in the same order.
"""

from __future__ import annotations

import json
import uuid

import pytest

from celery_resilience import CircuitBreaker
from celery_resilience.core.gates import BreakerState, GateAsk, OutcomeReport
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from tests.helpers.cluster import (
    calls_under,
    client_for,
    log_lines,
    module_env,
    running_nodes,
    wait_all,
)

#: The breaker of res.degraded, as the workers know it.
DEGRADED = CircuitBreaker("degraded")
#: With this seed the upstream's first calls fail 4, then 5, of 6: the plain share rule
#: (confidence=0.5) opens the breaker at the sixth call; the confidence rule never does.
SEED = 3


@pytest.fixture
def cluster(redis_server, upstream, celery_client, tmp_path):
    env = module_env(redis_server, upstream.url)
    with (
        redis_server.client(2) as raw,
        running_nodes(env, tmp_path, nodes=2, concurrency=2) as nodes,
    ):
        store = RedisStore(raw, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
        yield client_for(celery_client, env), nodes, store


@pytest.mark.integration
def test_an_upstream_failing_40_percent_at_random_keeps_the_breaker_closed(cluster, upstream):
    """120 tasks against an upstream that fails 40 % of calls at random: every task is
    done, about 1 / 0.6 calls each, and the breaker never opens, though the first calls
    fail often enough for the plain share rule to open it."""
    client, nodes, store = cluster
    prefix = f"/partial-{uuid.uuid4().hex[:8]}"
    upstream.degrade(prefix, 120.0, share=0.4, seed=SEED)
    results = [client.send_task("res.degraded", args=[f"{prefix}/{i}"]) for i in range(120)]
    assert wait_all(results, timeout=90, what="120 tasks") == ["SUCCESS"] * 120
    calls = calls_under(upstream, prefix)
    failed = sum(1 for r in calls if r.status == 503)
    assert len(calls) - failed == 120
    assert len(calls) / 120 <= 1.9
    assert log_lines(nodes, "breaker 'degraded': closed -> open") == []
    assert store.breaker(DEGRADED).state is BreakerState.CLOSED


@pytest.mark.integration
def test_calls_beyond_what_the_upstream_accepts_are_shed_and_deferred(cluster, upstream):
    """When other workers' calls were mostly not accepted (here: 40 asked, 5 accepted,
    the rest answered 429, which charges no breaker), the workers shed most new calls:
    deferred with the share named, no retry spent; once those counts are older than the
    throttle's horizon nothing is shed, and every task is done with one call."""
    client, nodes, store = cluster
    for i in range(40):
        holder = f"other-{i}"
        assert store.gate(GateAsk(holder=holder, breaker=DEGRADED)).allowed
        outcome = "success" if i < 5 else "neutral"
        store.record(OutcomeReport(holder=holder, breaker=DEGRADED, breaker_outcome=outcome))
    assert store.breaker(DEGRADED).shed > 0.7
    prefix = f"/shed-{uuid.uuid4().hex[:8]}"
    results = [client.send_task("res.degraded", args=[f"{prefix}/{i}"]) for i in range(20)]
    assert wait_all(results, timeout=60, what="20 tasks") == ["SUCCESS"] * 20
    assert log_lines(nodes, "deferred: breaker 'degraded' sheds")
    assert len(calls_under(upstream, prefix)) == 20
    assert log_lines(nodes, "breaker 'degraded': closed -> open") == []
    ledgers = [json.loads(r.result["ledger"]) for r in results if r.result["ledger"]]
    assert ledgers  # some were deferred ...
    assert all(ledger["f"] == 0 and ledger["d"] >= 1 for ledger in ledgers)  # ... spending none
