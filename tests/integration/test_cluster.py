"""The state store on a Redis Cluster (three local primaries) and through Sentinel.

In a Cluster each breaker, limiter and attempt lease lives in its own slot, so the gates
of one attempt are asked one after the other; these tests hold the same promises there.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_resilience.core.gates import BreakerState, Denial, GateAsk, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.state.connect import connect, describe
from celery_resilience.state.deferred import DeferredSuccesses
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Upstream
from tests.helpers.celery_apps import app_env
from tests.helpers.cluster import calls_under, client_for, least_span, module_env, wait_all
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_cluster import RedisCluster
from tests.helpers.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    nodes = RedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.fixture
def store(cluster: RedisCluster) -> Iterator[RedisStore]:
    client = connect(cluster.url())
    yield RedisStore(client, KeySpace(f"c-{uuid.uuid4().hex[:8]}"))
    client.close()


def test_late_successes_go_to_each_breakers_slot(store):
    """Successes held for two breakers (two slots) are counted, each in its own call; a
    failure carries those of its breaker, with its pool's release in another slot."""
    first, second = CircuitBreaker("late-a"), CircuitBreaker("late-b", minimum_calls=3)
    held = DeferredSuccesses(store.record, every=3600.0)
    for breaker, times in ((first, 3), (second, 2)):
        for _ in range(times):
            held.add(breaker)
    held.flush()
    for _ in range(4):
        held.add(second)

    store.record(
        held.take(
            OutcomeReport(
                holder="t:1",
                breaker=second,
                breaker_outcome="failure",
                concurrency=ConcurrencyLimit("late-pool", 2),
            )
        )
    )

    assert store.breaker(first).calls == 3
    assert (store.breaker(second).calls, store.breaker(second).failures) == (7, 1)


def test_the_url_reaches_the_cluster(cluster, store):
    """A redis+cluster:// URL naming the nodes gives a cluster client."""
    assert store.cluster
    assert describe(store.client).startswith("cluster 127.0.0.1:")


def test_breaker_opens_probes_and_closes_across_slots(store):
    """With breaker, limiter, pool and lease in four slots, the breaker still works."""
    breaker = CircuitBreaker("payments", minimum_calls=3, open_for=0.3, half_open_calls=1)
    pool = ConcurrencyLimit("payments-pool", 5)
    limiter = RateLimit("payments-rate", "1000/s", burst=1000)

    def ask(holder: str):
        return store.gate(
            GateAsk(
                holder=holder,
                breaker=breaker,
                concurrency=pool,
                limiter=limiter,
                attempt_key=store.keys.attempt(holder, 1),
            )
        )

    def report(holder: str, outcome: str, probe: bool = False):
        return store.record(
            OutcomeReport(
                holder=holder,
                breaker=breaker,
                breaker_outcome=outcome,
                probe=probe,
                concurrency=pool,
                attempt_key=store.keys.attempt(holder, 1),
            )
        )

    for n in range(3):
        assert ask(f"t{n}").allowed
        report(f"t{n}", "failure")
    refused = ask("t3")
    assert (refused.allowed, refused.denial) == (False, Denial.BREAKER_OPEN)
    assert store.limiter(None, pool, "payments-pool").in_use == 0, "the pool slot came back"
    wait_until(lambda: ask("probe").allowed, timeout=5, what="the half-open probe")
    assert ask("second").denial is Denial.BREAKER_HALF_OPEN
    closed = report("probe", "success", probe=True)
    assert closed.breaker_state is BreakerState.CLOSED
    assert store.breaker(breaker).state is BreakerState.CLOSED


def test_rate_limit_is_exact_across_slots(store):
    """A 50/s limiter on the cluster grants 50/s: booked slots, one interval apart."""
    limiter = RateLimit("search", "50/s")
    granted: list[float] = []
    deadline = time.monotonic() + 2.0
    n = 0
    while time.monotonic() < deadline and n < 1000:
        n += 1
        answer = store.gate(GateAsk(holder=f"h{n}", limiter=limiter))
        if answer.allowed:
            granted.append(answer.now)
        elif answer.slot is not None:
            time.sleep(max(answer.slot - answer.now, 0))
            again = store.gate(GateAsk(holder=f"h{n}", limiter=limiter, booked_slot=answer.slot))
            assert again.allowed
            granted.append(again.now)
    span = granted[-1] - granted[0]
    assert len(granted) - 1 == pytest.approx(span * 50, abs=2)


def test_workers_use_the_cluster_for_breakers_limits_and_dead_letters(
    cluster,
    worker_factory,
    celery_client: Callable[..., Celery],
    redis_server: RedisServer,
    upstream: Upstream,
    queue: str,
    unique: str,
    tmp_path: Path,
):
    """A worker whose state store is the cluster: limits hold, the breaker opens, letters land."""
    prefix = f"cw-{unique}"
    env = {
        **app_env(
            broker=redis_server.url(0),
            backend=redis_server.url(1),
            upstream=upstream.url,
            queue=queue,
        ),
        "RESILIENCE_TEST_STATE": cluster.url(),
        "RESILIENCE_TEST_PREFIX": prefix,
    }
    worker_factory("tests.apps.resilient", env=env)
    client = celery_client(redis_server.url(0), redis_server.url(1), queue)
    limited = f"/{unique}/limited"
    upstream.script(limited, [], then=200)
    results = [client.send_task("res.limited", args=[limited]) for _ in range(20)]
    assert all(r.get(timeout=30)["status"] == 200 for r in results)
    starts = sorted(r.start for r in upstream.requests(limited))
    assert (starts[-1] - starts[0]) >= least_span(20, 0.1), "10/s across 20 calls"

    down = f"/{unique}/down"
    upstream.script(down, [], then=503)
    failing = [client.send_task("res.guarded", args=[down]) for _ in range(8)]
    state = connect(cluster.url())
    try:
        store = RedisStore(state, KeySpace(prefix))
        wait_until(
            lambda: store.breaker(CircuitBreaker("upstream")).state is BreakerState.OPEN,
            timeout=30,
            what="the breaker 'upstream' open in the cluster",
        )
        assert upstream.count(down) < 8 * 3
        for result in failing:
            result.revoke()
        bad = f"/{unique}/bad"
        upstream.script(bad, [404])
        with pytest.raises(Exception, match="404"):
            client.send_task("res.call", args=[bad]).get(timeout=20)
        wait_until(
            lambda: state.xlen(KeySpace(prefix).dead_letters()) >= 1,
            timeout=10,
            what="the dead letter in the cluster",
        )
    finally:
        state.close()


def test_sentinel_url_finds_the_primary(redis_server: RedisServer, tmp_path: Path):
    """A redis+sentinel:// URL asks a real sentinel for the primary and talks to it."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
    )
    with (tmp_path / "sentinel.log").open("wb") as log:
        sentinel = subprocess.Popen(
            [find_redis_server(), str(config), "--sentinel"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        probe = redis.Redis(port=port, socket_timeout=1)
        try:
            wait_until(lambda: _answers(probe), timeout=10, what="the sentinel")
        finally:
            probe.close()
        client = connect(f"redis+sentinel://127.0.0.1:{port}/main/4")
        try:
            store = RedisStore(client, KeySpace(f"s-{uuid.uuid4().hex[:8]}"))
            assert store.gate(GateAsk(holder="x", breaker=CircuitBreaker("s"))).allowed
            assert describe(client) == "sentinel service main/4"
            assert client.connection_pool.connection_kwargs["db"] == 4
        finally:
            client.close()
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_the_parked_set_works_in_one_slot_of_a_cluster(cluster):
    """Park, list, release, claim and forget on a Cluster: the parked keys share a slot;
    persistence is asked of every primary (these run without an append-only file)."""
    from celery_resilience.state.parked import ParkedSet, reports_persistence  # noqa: PLC0415

    client = connect(cluster.url())
    try:
        parked = ParkedSet(client, KeySpace(f"c-{uuid.uuid4().hex[:8]}"))
        early = parked.park(task_name="t", task_id="1", reason="backoff", delay=0, message="{}")
        late = parked.park(
            task_name="t", task_id="2", reason="breaker_open", delay=600, message="{}"
        )
        assert [e.id for e in parked.entries()] == [early.id, late.id]
        assert parked.release_now(reason="breaker_open") == 1
        claimed: list = []

        def both() -> bool:
            claimed.extend(parked.claim_due(limit=10, lease=5))
            return len(claimed) >= 2

        wait_until(both, timeout=10, what="both entries due")
        assert {e.id for e in claimed} == {early.id, late.id}
        assert parked.drop([early.id, late.id]) == 2
        assert parked.summary().count == 0
        assert parked.first_delivery(early.id) is True
        assert reports_persistence(client) is False
    finally:
        client.close()


def test_a_cluster_with_a_primary_gone_falls_back_instead_of_raising(tmp_path: Path):
    """One of three primaries stopped while 200 attempts ask their gates and report, then
    the others: not one call raises (the Cluster errors, which do not derive from
    RedisError, are store errors too), and the store says it fell back."""
    from celery_resilience.state.fallback import FallbackStore  # noqa: PLC0415

    nodes = RedisCluster(tmp_path / "cluster").start()
    fell_back: list[str] = []
    try:
        client = connect(nodes.url(), timeout=1.0)
        store = FallbackStore(
            RedisStore(client, KeySpace(f"f-{uuid.uuid4().hex[:8]}")),
            mode="allow",
            describe="cluster",
            on_fallback=lambda: fell_back.append("fell back"),
        )
        breakers = [CircuitBreaker(f"b{i}") for i in range(20)]
        limiter = RateLimit("api", "1000/s", burst=1000)
        for i in range(200):
            if i == 50:
                nodes.nodes[1].stop()
            if i == 120:
                nodes.stop()
            breaker = breakers[i % len(breakers)]
            answer = store.gate(GateAsk(holder=f"h{i}", breaker=breaker, limiter=limiter))
            assert answer.allowed
            store.record(OutcomeReport(holder=f"h{i}", breaker=breaker, breaker_outcome="success"))
        client.close()
    finally:
        nodes.stop()
    assert store.degraded
    assert fell_back


def test_a_cluster_away_when_the_worker_starts_fails_open(
    worker_factory, celery_client, redis_server, upstream, unique
):
    """The state store is a Redis Cluster none of whose nodes answers when the worker
    starts (its client cannot even be made): 10 tasks behind a breaker and a rate limit
    all succeed on the per-process fallback, as with any unreachable store."""
    nodes = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    env = module_env(
        redis_server,
        upstream.url,
        RESILIENCE_TEST_STATE=f"redis+cluster://{nodes}",
        RESILIENCE_TEST_FALLBACK="allow",
    )
    worker_factory("tests.apps.resilient", env=env, concurrency=1)
    client = client_for(celery_client, env)

    results = [
        client.send_task(name, args=[f"/{unique}/{name}/{i}"])
        for name in ("res.guarded", "res.limited")
        for i in range(5)
    ]

    assert wait_all(results, timeout=30, what="10 tasks") == ["SUCCESS"] * 10
    assert len(calls_under(upstream, f"/{unique}")) == 10
