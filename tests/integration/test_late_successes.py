"""Successes counted late, against a real Redis: what a plain success costs (no round trip
of its own), that every held success is counted exactly once, by the next report of its
breaker or by the thread, that a flush to an unreachable Redis falls back quietly, and
that scripts a server forgot are loaded again; and that a pool process that stops reports
what it still holds.

The end-to-end behaviour (an outage still opens the breaker across prefork workers within
one window) is specified in ``test_breaker.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from celery.signals import worker_process_shutdown

from celery_resilience.core.gates import GateAsk, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.integration.hooks import connect as connect_hooks
from celery_resilience.integration.runtime import runtime_for
from celery_resilience.state.deferred import DeferredSuccesses
from celery_resilience.state.fallback import FallbackStore
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from tests.helpers.celery_apps import state_app
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_server: RedisServer, unique: str) -> Iterator[RedisStore]:
    client = redis_server.client(3)
    shared = RedisStore(client, KeySpace(f"late-{unique}"))
    # the script loaded, so that each count below is one call
    shared.record(OutcomeReport(holder="-", breaker=CircuitBreaker(f"warm-{unique}")))
    yield shared
    client.close()


def _scripts_run(store: RedisStore) -> int:
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _success(breaker: CircuitBreaker) -> OutcomeReport:
    return OutcomeReport(holder="t:1", breaker=breaker, breaker_outcome="success")


def test_held_successes_cost_no_call_and_go_together(store, unique):
    """100 plain successes send nothing; one flush counts all 100 in one script call."""
    breaker = CircuitBreaker(f"held-{unique}")
    held = DeferredSuccesses(store.record, every=3600.0)
    assert _success(breaker).deferrable
    before = _scripts_run(store)
    for _ in range(100):
        held.add(breaker)
    assert _scripts_run(store) == before
    assert held.held == 100

    held.flush()

    assert _scripts_run(store) == before + 1
    assert held.held == 0
    assert store.breaker(breaker).calls == 100


def test_the_thread_counts_held_successes_soon(store, unique):
    """With nothing else reported, a thread of the process counts the held successes."""
    breaker = CircuitBreaker(f"thread-{unique}")
    held = DeferredSuccesses(store.record)
    for _ in range(7):
        held.add(breaker)

    wait_until(lambda: store.breaker(breaker).calls == 7, timeout=5, what="7 successes counted")
    assert held.held == 0


def test_a_failure_carries_the_held_successes(store, unique):
    """A failure goes at once and counts the held successes before itself, in one call:
    the rate that decides whether the breaker opens is that of every outcome seen."""
    breaker = CircuitBreaker(f"carried-{unique}", minimum_calls=5, failure_rate=0.5)
    held = DeferredSuccesses(store.record, every=3600.0)
    for _ in range(6):
        held.add(breaker)
    before = _scripts_run(store)
    failure = OutcomeReport(holder="t:2", breaker=breaker, breaker_outcome="failure")
    assert not failure.deferrable

    for _ in range(5):
        store.record(held.take(failure))

    status = store.breaker(breaker)
    assert _scripts_run(store) == before + 5 + 1  # five reports, one status read
    assert (status.calls, status.failures) == (11, 5)
    assert status.state.value == "closed"  # 5 of 11; reported alone, 5 of 5 would open it
    assert held.held == 0


def test_reports_that_others_wait_for_are_not_held():
    """Probes, slots, pauses, leases and failures go at once; so does a report without a
    breaker (there is nothing to count)."""
    breaker = CircuitBreaker("kinds")
    base = _success(breaker)
    assert base.deferrable
    assert not OutcomeReport(holder="t:1", breaker=None, breaker_outcome="success").deferrable
    assert not OutcomeReport(holder="t:1", breaker=breaker, breaker_outcome="neutral").deferrable
    assert not OutcomeReport(
        holder="t:1", breaker=breaker, breaker_outcome="success", probe=True
    ).deferrable
    assert not OutcomeReport(
        holder="t:1", breaker=breaker, breaker_outcome="success", attempt_key="k"
    ).deferrable


def test_a_flush_to_an_unreachable_redis_falls_back_quietly(unique):
    """Held successes flushed while Redis cannot be reached go to the per-process
    fallback; nothing raises."""
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    fallback = FallbackStore(RedisStore(client, KeySpace(f"down-{unique}")))
    breaker = CircuitBreaker(f"down-{unique}")
    held = DeferredSuccesses(fallback.record, every=3600.0)
    for _ in range(3):
        held.add(breaker)

    held.flush()

    assert fallback.degraded
    assert fallback.local.breaker(breaker).calls == 3
    client.close()


def test_scripts_come_back_after_the_server_forgets_them(store, unique):
    """A server that lost its scripts (restarted, flushed) gets them again on the next
    call, which answers as usual."""
    breaker = CircuitBreaker(f"noscript-{unique}")
    store.client.script_flush()

    store.record(_success(breaker))
    answer = store.gate(GateAsk(holder="t:3", breaker=breaker))

    assert answer.allowed
    assert store.breaker(breaker).calls == 1


def test_a_stopping_pool_process_reports_what_it_holds(redis_server, unique):
    """``worker_process_shutdown`` (sent in a prefork pool process as it exits) reports
    the successes the process's runtime still holds, before the thread would."""
    app = state_app(redis_server, f"late-{unique}")
    rt = runtime_for(app)
    rt.successes = DeferredSuccesses(rt.store.record, every=3600.0)
    breaker = CircuitBreaker(f"shutdown-{unique}")
    for _ in range(4):
        rt.record(_success(breaker))
    assert rt.shared.breaker(breaker).calls == 0
    connect_hooks()

    worker_process_shutdown.send(sender="test", pid=os.getpid(), exitcode=0)

    assert rt.shared.breaker(breaker).calls == 4
    rt.client.close()
    app.close()
