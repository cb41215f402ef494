"""Failure paths on a real worker: what a task that cannot go on does, and does not take."""

from __future__ import annotations

import pytest

from celery_resilience import GaveUp
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.limits import ConcurrencyLimit, RateLimit
from celery_resilience.state.deadletters import DeadLetters
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore

pytestmark = pytest.mark.integration


def test_an_expired_task_takes_no_rate_limit_slot(
    worker, client, upstream, unique, env, redis_server
):
    """A task whose deadline passed while it waited gives up before its gates: no call,
    and its limiter was never touched (no slot booked or granted for it)."""
    path = f"/{unique}/late"
    upstream.script(path, [], then=200)
    state_client = redis_server.client(2)
    try:
        seconds, micros = state_client.time()
        started = seconds + micros / 1e6 - 60.0
        result = client.send_task(
            "res.limited_deadline",
            args=[path],
            headers={"resilience": AttemptState(started=started).to_header()},
        )
        with pytest.raises(GaveUp, match="deadline of 5 s passed"):
            result.get(timeout=20)
        store = RedisStore(state_client, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
        status = store.limiter(RateLimit("late", "1/s"), None, "late")
    finally:
        state_client.close()
    assert upstream.count(path) == 0
    assert not status.exists


def test_a_failing_backoff_gives_back_its_grants_and_leaves_a_dead_letter(
    worker, client, upstream, unique, env, redis_server
):
    """The task's backoff raises after a 503: the task gives up (GaveUp, naming the error
    type), its concurrency slot is given back (a second such task gets it at once) and a
    dead letter is kept for each."""
    path = f"/{unique}/bad-backoff"
    upstream.script(path, [], then=503)
    for _ in range(2):
        result = client.send_task("res.bad_backoff", args=[path])
        with pytest.raises(GaveUp, match="backoff strategy raised ZeroDivisionError"):
            result.get(timeout=20)
    state_client = redis_server.client(2)
    try:
        store = RedisStore(state_client, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
        pool = store.limiter(None, ConcurrencyLimit("bad-backoff", 1, lease=60.0), "bad-backoff")
        letters = DeadLetters(state_client, KeySpace(env["RESILIENCE_TEST_PREFIX"]), 100)
        mine = [letter for letter in letters.list(100) if letter.task_name == "res.bad_backoff"]
    finally:
        state_client.close()
    assert upstream.count(path) == 2
    assert pool.in_use == 0
    assert len(mine) == 2
