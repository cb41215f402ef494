"""A breaker's retry budget, end to end: real workers, a real upstream, Redis shared.

Each task's first call fails once (503), so that every task wants exactly one retry: the
budget decides when the retries go. ``res.retry_budget`` may add 25 % of its first attempts,
or one a second, over its 4 s window, and waits beyond that; ``res.retry_budget_strict`` gives
up beyond its budget.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers.cluster import (
    calls_under,
    client_for,
    log_lines,
    module_env,
    running_nodes,
    wait_all,
    windows,
)

#: The window of the breaker of res.retry_budget.
WINDOW = 4.0


@pytest.fixture
def cluster(redis_server, upstream, celery_client, tmp_path):
    env = module_env(redis_server, upstream.url)
    with running_nodes(env, tmp_path, nodes=2, concurrency=2) as nodes:
        yield client_for(celery_client, env), nodes


def _fail_once(upstream, prefix: str, count: int) -> list[str]:
    paths = [f"{prefix}/{i}" for i in range(count)]
    for path in paths:
        upstream.script(path, [503])
    return paths


@pytest.mark.integration
def test_retries_beyond_the_budget_wait_and_spend_no_retry(cluster, upstream):
    """20 tasks, each failing once: the first window lets through 25 % of its 20 first
    attempts (5); the rest wait for the window to move on, about 4 every 4 s (the floor),
    and every task is done with its single retry, deferrals spending none."""
    client, nodes = cluster
    prefix = f"/budget-{uuid.uuid4().hex[:8]}"
    paths = _fail_once(upstream, prefix, 20)
    results = [client.send_task("res.retry_budget", args=[path]) for path in paths]
    assert wait_all(results, timeout=90, what="20 tasks") == ["SUCCESS"] * 20
    calls = calls_under(upstream, prefix)
    assert len(calls) == 40  # one failure and one retry each
    seen: set[str] = set()
    retries = []
    for call in sorted(calls, key=lambda c: c.start):
        if call.path in seen:
            retries.append(call.start)
        seen.add(call.path)
    # the window holds 3.6 to 4 s of calls; 3 s windows hold at most the allowance,
    # max(1/s x 4 s, 0.25 x 20) = 5, plus one for a grant answered late
    assert windows(retries, width=3.0) <= 6
    assert max(retries) - min(retries) >= 2 * WINDOW  # without a budget: a second or two
    assert log_lines(nodes, "deferred: retry budget of breaker 'retry_budget' spent")
    ledgers = [json.loads(r.result["ledger"]) for r in results]
    assert all(ledger["f"] == 1 for ledger in ledgers)
    assert any(ledger["d"] >= 1 for ledger in ledgers)


@pytest.mark.integration
def test_a_retry_beyond_a_strict_budget_gives_up(cluster, upstream):
    """10 tasks, each failing once, with a budget of one retry per 10 s window: about one
    is retried and done; the others give up at once, saying why."""
    client, nodes = cluster
    prefix = f"/strict-{uuid.uuid4().hex[:8]}"
    paths = _fail_once(upstream, prefix, 10)
    results = [client.send_task("res.retry_budget_strict", args=[path]) for path in paths]
    states = wait_all(results, timeout=60, what="10 tasks")
    assert 1 <= states.count("SUCCESS") <= 2
    assert states.count("FAILURE") == 10 - states.count("SUCCESS")
    assert log_lines(nodes, "retry budget of breaker 'retry_budget_strict' spent")
    assert len(calls_under(upstream, prefix)) == 10 + states.count("SUCCESS")
