"""Failure paths on a real worker: what a task that cannot go on does, and does not take."""

from __future__ import annotations

import pytest

from celery_resilience import GaveUp
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.policy import RateLimit
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
