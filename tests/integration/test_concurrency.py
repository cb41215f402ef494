"""The concurrency limit shared through Redis, end to end on 2 nodes x 4 processes.

Tasks come from :mod:`tests.apps.resilient`: ``res.pooled`` holds one of the 3 slots of
'api' (5 s leases) while it calls the upstream; ``res.solo`` holds the only slot of
'solo' (3 s lease) and names its process in the call (``?pid=``), so that a test can
kill it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from example_project.upstream import Response, max_overlap
from tests.helpers.cluster import (
    calls_under,
    log_lines,
    note,
    running_nodes,
    wait_all,
)
from tests.helpers.polling import wait_until
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nodes(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[CeleryWorker]]:
    """2 worker nodes of 4 processes each: more processes than slots."""
    with running_nodes(env, tmp_path_factory.mktemp("workers"), nodes=2, concurrency=4) as w:
        yield w


def test_the_upstream_never_sees_more_than_the_limit(nodes, client, upstream, unique, request):
    """16 tasks under ConcurrencyLimit("api", 3) on 8 processes, against an upstream that
    takes 0.3 s to answer (503 for the first 4 calls): every task succeeds, and the upstream
    never has more than 3 of them in flight; it does have 3 (the limit is used, not just
    respected). A failed attempt gives its slot back like a successful one."""
    prefix = f"/{unique}/pooled"
    upstream.script(prefix, [Response(503, delay=0.3)] * 4, then=Response(delay=0.3))

    results = [client.send_task("res.pooled", args=[f"{prefix}/{i}"]) for i in range(16)]

    assert wait_all(results, timeout=60, what="16 pooled tasks") == ["SUCCESS"] * 16
    calls = upstream.requests(prefix)
    note(request, calls=len(calls), max_in_flight=max_overlap(calls))
    assert len(calls) == 20
    assert max_overlap(calls) == 3


def test_a_killed_holders_slot_comes_back_when_its_worker_sees_the_loss(
    nodes, client, upstream, unique, request
):
    """The process holding the only slot of 'solo' is SIGKILLed in the middle of its call.
    Its worker sees the loss and gives the slot back at once: another task runs after the
    kill, without waiting for the dead holder's lease to run out."""
    upstream.script(f"/{unique}/holder", [], then=Response(delay=10.0))
    holder = client.send_task("res.solo", args=[f"/{unique}/holder"])
    (call,) = wait_until(
        lambda: upstream.requests(f"/{unique}/holder"), timeout=20, what="the holder's call"
    )
    killed_at = time.time()
    os.kill(int(call.query.removeprefix("pid=")), signal.SIGKILL)

    waiting = client.send_task("res.solo", args=[f"/{unique}/waiting"])

    assert waiting.get(timeout=20)["status"] == 200
    wait_until(lambda: holder.state == "FAILURE", timeout=10, what="the holder to be lost")
    assert "WorkerLostError" in repr(holder.info)
    (late,) = calls_under(upstream, f"/{unique}/waiting")
    note(request, after_kill=round(late.start - killed_at, 3))
    assert late.start >= killed_at
    (given,) = log_lines(nodes, f"task {holder.id}, attempt ")
    assert "its lease and grants are given back" in given
