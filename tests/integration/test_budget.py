"""Deadlines reach the upstream, on a real worker: timeouts cut, the budget header, and
no call started without time for it."""

from __future__ import annotations

import pytest

from celery_resilience import GaveUp
from celery_resilience.core.ledger import AttemptState
from celery_resilience.state.deadletters import DeadLetters
from celery_resilience.state.keys import KeySpace
from tests.helpers.cluster import module_env

pytestmark = pytest.mark.integration

HEADER = "X-Request-Timeout"


@pytest.fixture(scope="module")
def env(redis_server, upstream_server) -> dict[str, str]:
    """The module's worker sends the budget header."""
    return module_env(redis_server, upstream_server.url, RESILIENCE_TEST_DEADLINE_HEADER=HEADER)


def _started_ago(redis_server, seconds: float) -> dict[str, str]:
    """Message headers saying the task's first attempt was ``seconds`` ago (store clock)."""
    client = redis_server.client(2)
    try:
        now, micros = client.time()
    finally:
        client.close()
    return {"resilience": AttemptState(started=now + micros / 1e6 - seconds).to_header()}


def test_two_seconds_left_never_send_a_longer_timeout(
    worker, client, upstream, unique, redis_server
):
    """8 s of a 10 s deadline gone: the default (3.05, 30) s timeout goes out as at most
    2 s to connect and 2 s to read, and the upstream is told at most 2 s."""
    path = f"/{unique}/two-left"
    upstream.script(path, [], then=200)
    result = client.send_task("res.budgeted", args=[path], headers=_started_ago(redis_server, 8.0))
    (sent,) = result.get(timeout=20)["timeouts"]
    assert isinstance(sent, list)  # (connect, read), through JSON
    assert len(sent) == 2
    assert all(0.0 < part <= 2.0 for part in sent), sent
    (seen,) = upstream.requests(path)
    told = float(seen.header(HEADER) or "nan")
    assert 0.0 < told <= 2.0
    assert told >= max(sent) - 0.001


def test_no_time_left_no_call(worker, client, upstream, unique, env, redis_server):
    """The body spends its deadline down to 50 ms: its call is not started, the task gives
    up as by its deadline (no retry) with a dead letter."""
    path = f"/{unique}/none-left"
    upstream.script(path, [], then=200)
    result = client.send_task(
        "res.budgeted",
        args=[path],
        kwargs={"spend_to": 0.05},
        headers=_started_ago(redis_server, 9.0),
    )
    with pytest.raises(GaveUp, match="deadline of 10 s passed"):
        result.get(timeout=20)
    assert upstream.count(path) == 0
    state_client = redis_server.client(2)
    try:
        letters = DeadLetters(state_client, KeySpace(env["RESILIENCE_TEST_PREFIX"]), 100)
        mine = [letter for letter in letters.list(100) if letter.task_id == result.id]
    finally:
        state_client.close()
    assert [letter.verdict for letter in mine] == ["deadline"]
    assert mine[0].attempts == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_httpx_calls_are_traced_keyed_retried_and_bounded(
    worker, client, upstream, unique, redis_server, kind
):
    """Through httpx: 503, 503, 200 is retried (one trace, a span per attempt, one
    Idempotency-Key), 8 s into the 10 s deadline the upstream is told at most 2 s."""
    path = f"/{unique}/httpx-{kind}"
    upstream.script(path, [503, 503], then=200)
    result = client.send_task(
        "res.via_httpx",
        args=[path, "POST", kind],
        headers=_started_ago(redis_server, 4.0),
    )
    assert result.get(timeout=20) == 200
    calls = upstream.requests(path)
    assert [c.status for c in calls] == [503, 503, 200]
    parents = [(c.header("traceparent") or "").split("-") for c in calls]
    assert len({p[1] for p in parents}) == 1
    assert len({p[2] for p in parents}) == 3
    assert len({c.header("Idempotency-Key") for c in calls}) == 1
    told = [float(c.header(HEADER) or "nan") for c in calls]
    assert all(0.0 < t <= 6.0 for t in told), told
    assert told == sorted(told, reverse=True), "each retry has less left"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_httpx_permanent_failure_is_not_retried(worker, client, upstream, unique, kind):
    """A 404 through httpx fails the task at once: one call."""
    path = f"/{unique}/httpx-404-{kind}"
    upstream.script(path, [], then=404)
    with pytest.raises(Exception, match="404"):
        client.send_task("res.via_httpx", args=[path, "GET", kind]).get(timeout=20)
    assert upstream.count(path) == 1
