"""The retry engine end to end: real workers, a real Redis, the real upstream.

Tasks come from :mod:`tests.apps.resilient`; their backoff for these tests is full jitter
with a 0.25 s base and a 2 s cap (``FAST``), so a countdown after failure *n* lies in
[0.05, min(2, 0.25 * 2**(n-1))] seconds.
"""

from __future__ import annotations

import email.utils
import itertools

import pytest
from celery.result import AsyncResult

from celery_resilience import resilient_task
from celery_resilience.core.gates import OutcomeReport
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Response, Upstream, closed_port_url
from tests.helpers.celery_apps import app_env
from tests.helpers.polling import wait_until
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.resilient"
#: Broker and worker overhead allowed on top of a countdown, seconds.
SLACK = 1.0


def _retry_logged(worker: CeleryWorker, result: AsyncResult) -> bool:
    return any(f"[{result.id}] retry:" in line for line in worker.log_text().splitlines())


def test_503_three_times_then_success(
    worker_factory,
    celery_client,
    broker_url,
    redis_server,
    backend_url,
    upstream,
    queue,
    unique,
):
    """503, 503, 503, 200: SUCCESS after exactly 4 calls, each gap within the backoff."""
    env = {
        **app_env(broker=broker_url, backend=backend_url, upstream=upstream.url, queue=queue),
        "RESILIENCE_TEST_STATE": redis_server.url(2),
        "RESILIENCE_TEST_PREFIX": f"t-{unique}",
    }
    worker_factory(APP, env=env)
    client = celery_client(broker_url, backend_url, queue)
    path = f"/{unique}/flaky"
    upstream.script(path, [503, 503, 503], then=200)

    result = client.send_task("res.call", args=[path])

    assert result.get(timeout=30)["status"] == 200
    assert result.state == "SUCCESS"
    calls = upstream.requests(path)
    assert [c.status for c in calls] == [503, 503, 503, 200]
    for n, (before, after) in enumerate(itertools.pairwise(calls), start=1):
        gap = after.start - before.start
        assert 0.05 <= gap <= min(2.0, 0.25 * 2 ** (n - 1)) + SLACK, (n, gap)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_permanent_status_fails_at_once(worker, client, upstream, unique, status):
    """A 4xx: exactly one call, FAILURE, and no retry ever recorded."""
    path = f"/{unique}/{status}"
    upstream.script(path, [status], then=200)

    result = client.send_task("res.call", args=[path])

    with pytest.raises(Exception, match=str(status)):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert upstream.count(path) == 1
    assert not _retry_logged(worker, result)


def test_429_retry_after_seconds_is_a_floor(worker, client, upstream, unique):
    """429 with Retry-After: 2: the next call comes at least 2 s after the first."""
    path = f"/{unique}/throttled"
    upstream.script(path, [Response(status=429, retry_after=2)], then=200)

    result = client.send_task("res.call", args=[path])

    assert result.get(timeout=20)["status"] == 200
    first, second = upstream.requests(path)
    assert second.start - first.start >= 2.0


def test_429_retry_after_http_date_is_a_floor(worker, client, upstream, unique):
    """429 with Retry-After as an HTTP-date: the next call comes no earlier than that date."""
    path = f"/{unique}/throttled-date"
    upstream.script(path, [Response(status=429, retry_after_date=3)], then=200)

    result = client.send_task("res.call", args=[path])

    assert result.get(timeout=20)["status"] == 200
    first, second = upstream.requests(path)
    told = email.utils.parsedate_to_datetime(
        email.utils.formatdate(first.start + 3, usegmt=True)
    ).timestamp()
    assert second.start >= told >= first.start + 2.0


def test_always_503_with_max_retries_3_fails_after_4_calls(worker, client, upstream, unique):
    """Always 503 and max_retries=3: FAILURE (GaveUp, with its history) after exactly 4 calls."""
    path = f"/{unique}/down"
    upstream.script(path, [], then=503)

    result = client.send_task("res.call3", args=[path])

    with pytest.raises(Exception, match="gave up after 4 attempt") as info:
        result.get(timeout=30)
    assert type(info.value).__name__ == "GaveUp"
    assert "#1 transient: HTTP 503" in str(info.value)
    assert "#4 transient: HTTP 503" in str(info.value)
    assert result.state == "FAILURE"
    assert upstream.count(path) == 4


def test_read_timeout_is_retried(worker, client, upstream, unique):
    """A response slower than the client's timeout is transient: retried, then SUCCESS."""
    path = f"/{unique}/slow"
    upstream.script(path, [Response(delay=2.0)], then=200)

    result = client.send_task("res.call", args=[path], kwargs={"timeout": 0.5})

    assert result.get(timeout=30)["status"] == 200
    assert upstream.count(path) == 2


def test_refused_connection_is_retried(worker, client, unique):
    """Nothing listening: the attempt is retried; once the upstream is up, SUCCESS."""
    base = closed_port_url()
    port = int(base.rsplit(":", 1)[1])

    result = client.send_task("res.slow_backoff", args=[f"/{unique}"], kwargs={"base": base})

    wait_until(
        lambda: "attempt 1 failed: transient (ConnectionError" in worker.log_text(),
        timeout=15,
        what="the first, refused attempt",
    )
    with Upstream(port=port) as late:
        assert result.get(timeout=15)["status"] == 200
        assert [r.path for r in late.requests()] == [f"/{unique}"]


def test_waiting_task_does_not_hold_the_worker(
    worker_factory, celery_client, env, upstream, unique
):
    """While A waits out its countdown, B runs to completion on the same single process."""
    worker_factory(APP, env={**env, "RESILIENCE_TEST_QUEUE": f"q-{unique}"}, concurrency=1)
    client = celery_client(
        env["RESILIENCE_TEST_BROKER"], env["RESILIENCE_TEST_BACKEND"], f"q-{unique}"
    )
    path_a, path_b = f"/{unique}/a", f"/{unique}/b"
    upstream.script(path_a, [503], then=200)
    upstream.script(path_b, [], then=200)

    a = client.send_task("res.slow_backoff", args=[path_a])
    wait_until(lambda: upstream.count(path_a) == 1, timeout=15, what="A's first call")
    b = client.send_task("res.call", args=[path_b])

    assert b.get(timeout=15)["status"] == 200
    assert a.get(timeout=15)["status"] == 200
    first_a, second_a = upstream.requests(path_a)
    (only_b,) = upstream.requests(path_b)
    assert first_a.start < only_b.start < second_a.start
    assert second_a.start - first_a.start >= 3.0


def test_a_body_that_requeues_itself_is_not_taken_for_a_duplicate(worker, client, upstream, unique):
    """``self.retry`` from the body: the re-queued attempt runs (its lease was released)."""
    path = f"/{unique}/requeued"
    upstream.script(path, [], then=200)

    result = client.send_task("res.requeues_itself", args=[path])

    assert result.get(timeout=20)["status"] == 200
    assert upstream.count(path) == 1


def test_a_new_publication_under_the_same_id_runs(worker, client, upstream, unique):
    """Publishing a task ID again (as Task.replace does) runs again: it is not a copy.
    (The publisher declares a resilient task, as one publishing resilient tasks does: that
    connects the hook that tells one publication from another.)"""

    def declared() -> None:
        """A resilient task of the publisher's own (never sent)."""

    resilient_task(app=client, name=f"declared.{unique}", shared=False)(declared)
    path = f"/{unique}/again"
    upstream.script(path, [], then=200)
    task_id = f"fixed-{unique}"
    assert client.send_task("res.call", args=[path], task_id=task_id).get(timeout=20)
    client.send_task("res.call", args=[path], task_id=task_id)
    # (the result backend already holds the first one's result under this ID)
    wait_until(lambda: upstream.count(path) == 2, timeout=20, what="the second publication run")


def test_a_lost_retry_is_published_again_by_the_redelivered_copy(
    worker, client, upstream, unique, env, redis_server
):
    """Attempt 1 failed and its worker died before publishing the retry: the redelivered
    copy of attempt 1 publishes it, and the task completes without calling twice."""
    path = f"/{unique}/lost-retry"
    upstream.script(path, [], then=200)
    task_id, nonce = f"lost-{unique}", "0123456789abcdef"
    state = redis_server.client(2)
    try:
        store = RedisStore(state, KeySpace(env["RESILIENCE_TEST_PREFIX"]))
        store.record(
            OutcomeReport(
                holder=f"{task_id}:1",
                attempt_mark="retried",
                attempt_key=store.keys.attempt(task_id, 1, nonce),
            )
        )
    finally:
        state.close()
    result = client.send_task(
        "res.call", args=[path], task_id=task_id, headers={"resilience_nonce": nonce}
    )
    assert result.get(timeout=20)["status"] == 200
    assert upstream.count(path) == 1
    assert "while publishing the retry" in worker.log_text()


def test_no_secret_reaches_the_result_backend(worker, client, upstream, unique):
    """An API key in the URL stays out of the stored failure (message and traceback)."""
    refused = f"/{unique}/refused"
    down = f"/{unique}/down"
    upstream.script(refused, [401])
    upstream.script(down, [], then=503)
    for task, path in (("res.call", refused), ("res.call3", down)):
        result = client.send_task(task, args=[f"{path}?api_key=SUPERSECRET123"])
        with pytest.raises(Exception) as info:
            result.get(timeout=30)
        assert "SUPERSECRET123" not in str(info.value)
        assert "SUPERSECRET123" not in (result.traceback or "")


def test_a_requeued_message_comes_back_and_runs(
    worker_factory, celery_client, env, upstream, unique
):
    """Reject(requeue=True) from the body (acks_late): the message comes back and runs."""
    queue = f"q-{unique}"
    worker_factory(
        APP, env={**env, "RESILIENCE_TEST_QUEUE": queue, "RESILIENCE_TEST_ACKS_LATE": "1"}
    )
    client = celery_client(env["RESILIENCE_TEST_BROKER"], env["RESILIENCE_TEST_BACKEND"], queue)
    path = f"/{unique}/rejected"
    upstream.script(path, [], then=200)
    assert client.send_task("res.rejects_once", args=[path]).get(timeout=30)["status"] == 200
    assert upstream.count(path) == 2
