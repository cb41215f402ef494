"""A final state never regresses: workers lost between publishing a retry and acknowledging
its message leave copies of the attempt, which must neither publish the retry again nor
write RETRY over the FAILURE or SUCCESS the next attempt stored.

Workers are killed (SIGKILL, the whole node) while a pool process holds the message of an
attempt whose retry it has just published: ``RESILIENCE_TEST_RETRY_PAUSE`` keeps it there
(and logs "holding the acknowledgement"), so each kill lands in that window. The Redis
broker's short visibility timeout brings every copy back within seconds.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable

import pytest
from celery import Celery
from celery.result import AsyncResult

from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Upstream
from tests.helpers.celery_apps import ENV_BACKEND, ENV_BROKER, ENV_QUEUE
from tests.helpers.cluster import module_env
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.faults"
#: The breaker of ``res.guarded``.
BREAKER = CircuitBreaker("upstream", minimum_calls=5, open_for=2.0)
IGNORED = "was already done (a redelivered message): ignored"


@pytest.fixture
def env(redis_server: RedisServer, upstream: Upstream) -> dict[str, str]:
    """acks_late tasks on the private Redis, copies back after 3 s."""
    return module_env(
        redis_server,
        upstream.url,
        RESILIENCE_TEST_ACKS_LATE="1",
        RESILIENCE_TEST_GUARD="acks_late",
        RESILIENCE_TEST_VISIBILITY="3",
    )


@pytest.fixture
def client(celery_client: Callable[..., Celery], env: dict[str, str]) -> Celery:
    return celery_client(env[ENV_BROKER], env[ENV_BACKEND], env[ENV_QUEUE])


def _holding(worker: CeleryWorker) -> int:
    return worker.log_text().count("holding the acknowledgement")


@pytest.mark.parametrize("deferred", [False, True], ids=["retried", "deferred"])
def test_a_copy_of_an_attempt_sent_back_leaves_the_final_failure_alone(
    worker_factory, client, env, upstream, unique, redis_server, request, deferred
):
    """Attempt 1's message is sent back (its retry after a 503; or, first, its deferral by
    a breaker held open) and its worker dies before the acknowledgement; the task goes on
    elsewhere and attempt 2 fails for good (404). The copy of the old message comes back
    10 s later: it is ignored, publishes nothing, and the task stays FAILURE."""
    env = {**env, "RESILIENCE_TEST_VISIBILITY": "10"}
    victim = worker_factory(APP, env={**env, "RESILIENCE_TEST_RETRY_PAUSE": "60"})
    path = f"/{unique}/once"
    upstream.script(path, [503, 404], then=200)
    store = RedisStore(redis_server.client(2), KeySpace(env["RESILIENCE_TEST_PREFIX"]))
    request.addfinalizer(store.client.close)
    if deferred:
        store.breaker(BREAKER, "open")
    name = "res.guarded" if deferred else "res.call"
    result = client.send_task(name, args=[path])
    wait_until(lambda: _holding(victim), timeout=30, what="the message sent back")
    victim.kill()
    store.breaker(BREAKER, "reset")
    survivor = worker_factory(APP, env=env)
    wait_until(lambda: result.state == "FAILURE", timeout=30, what="attempt 2's FAILURE")
    wait_until(lambda: IGNORED in survivor.log_text(), timeout=30, what="the copy handled")
    assert "attempt 1 was already done" in survivor.log_text()
    assert AsyncResult(result.id, app=client).state == "FAILURE"
    assert "stopped while publishing the retry" not in survivor.log_text()  # not again
    assert upstream.count(path) == 2


def test_retrying_tasks_through_worker_kills_all_end_final(
    worker_factory, client, env, upstream, unique
):
    """200 tasks that retry (half end in FAILURE, half in SUCCESS) while nodes are killed,
    five times, each time while a retry's message waits for its acknowledgement: every
    task ends in its final state, none in RETRY or PENDING, and no attempt of any task
    runs to its end twice."""
    # copies come back after 10 s: by then the next attempt, queued behind the backlog,
    # has mostly run, so that a copy which wrote RETRY would overwrite a final state
    held = {**env, "RESILIENCE_TEST_RETRY_PAUSE": "0.3", "RESILIENCE_TEST_VISIBILITY": "10"}
    nodes = [worker_factory(APP, env=held, name=f"n{i}-{unique}", wait=False) for i in range(3)]
    for node in nodes:
        node.wait_ready()
    scripts = {}
    for i in range(200):
        path = f"/{unique}/t{i}"
        scripts[path] = (503, 404) if i % 2 else (503, 503, 200)
        upstream.script(path, list(scripts[path][:-1]), then=scripts[path][-1])
    results = {path: client.send_task("res.call", args=[path]) for path in scripts}
    live, seen, kills = list(nodes), {n.name: 0 for n in nodes}, 0

    def holding() -> CeleryWorker | None:
        return next((n for n in live if _holding(n) > seen[n.name]), None)

    while kills < 5:
        try:  # the node that holds a retry's message next; none for long: the work is over
            victim = wait_until(holding, timeout=20, interval=0.05, what="a retry held")
        except TimeoutError:
            break
        victim.kill()
        live.remove(victim)
        kills += 1
        spare = worker_factory(APP, env=held, name=f"r{kills}-{unique}", wait=False)
        nodes.append(spare)
        live.append(spare)
        seen[spare.name] = 0
    assert kills >= 3

    def settled() -> bool:
        return all(r.ready() for r in results.values())

    with contextlib.suppress(TimeoutError):  # the states below say which are not
        wait_until(settled, timeout=120, interval=0.5, what="every task final")
    states = Counter(r.state for r in results.values())
    assert states == {"SUCCESS": 100, "FAILURE": 100}
    for path, result in results.items():
        expected = "SUCCESS" if scripts[path][-1] == 200 else "FAILURE"
        assert result.state == expected, path
    ends = Counter(
        (found[1], found[2])
        for node in nodes
        for found in re.finditer(
            r"res\.call\[([^\]]+)\]: attempt (\d+) (?:failed|succeeded)", node.log_text()
        )
    )
    twice = {key: n for key, n in ends.items() if n > 1}
    assert twice == {}
