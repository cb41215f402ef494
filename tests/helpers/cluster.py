"""Worker nodes shared by the tests of one module, and the bookkeeping around them.

A module gets a queue and a key prefix of its own (so its breakers and limiters are its
own), any number of nodes started in parallel, and bounded ways to wait for many results
and to count what happened at the upstream::

    env = module_env(redis_server, upstream_server.url)
    with running_nodes(env, logdir, nodes=2, concurrency=2) as workers:
        ...
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from celery.result import AsyncResult

from celery_resilience.state.redis import SLOT_SLACK
from example_project.upstream import RequestRecord, Upstream
from tests.helpers.celery_apps import ENV_BACKEND, ENV_BROKER, ENV_QUEUE, app_env
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker, stop_workers

if TYPE_CHECKING:
    import pytest

RESILIENT_APP = "tests.apps.resilient"


def module_env(redis_server: RedisServer, upstream_url: str, **extra: str) -> dict[str, str]:
    """Worker environment on the private Redis: broker db 0, results db 1, state db 2,
    with a queue and a key prefix of its own, every attempt holding a lease (so that the
    tests also see each grant as its lease); ``extra`` variables are added."""
    unique = uuid.uuid4().hex[:10]
    return {
        **app_env(
            broker=redis_server.url(0),
            backend=redis_server.url(1),
            upstream=upstream_url,
            queue=f"q-{unique}",
        ),
        "RESILIENCE_TEST_STATE": redis_server.url(2),
        "RESILIENCE_TEST_PREFIX": f"t-{unique}",
        "RESILIENCE_TEST_GUARD": "always",
        **extra,
    }


def transitions_env(redis_server: RedisServer, upstream_url: str) -> dict[str, str]:
    """:func:`module_env`, with breaker transitions counted in a list in the result
    backend (``RESILIENCE_TEST_TRANSITIONS`` names it; see ``tests.apps.resilient``)."""
    env = module_env(redis_server, upstream_url)
    env["RESILIENCE_TEST_TRANSITIONS"] = f"{env['RESILIENCE_TEST_PREFIX']}:transitions"
    return env


def client_for(celery_client: Callable[..., Celery], env: dict[str, str]) -> Celery:
    """A client app (from the ``celery_client`` fixture) on the workers' broker and queue."""
    return celery_client(env[ENV_BROKER], env[ENV_BACKEND], env[ENV_QUEUE])


@contextlib.contextmanager
def running_nodes(
    env: dict[str, str],
    logdir: Path,
    *,
    nodes: int,
    concurrency: int,
    name: str = "node",
    app: str = RESILIENT_APP,
) -> Iterator[list[CeleryWorker]]:
    """Start ``nodes`` worker nodes of ``concurrency`` processes each, in parallel; wait
    until each answers ping; stop them all (by PID) on exit."""
    tag = env["RESILIENCE_TEST_PREFIX"]
    workers = [
        CeleryWorker(
            app,
            f"{name}{i}-{tag}",
            env=env,
            logfile=logdir / f"{name}{i}.log",
            concurrency=concurrency,
        )
        for i in range(nodes)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        stop_workers(workers)


def wait_all(results: Sequence[AsyncResult], *, timeout: float, what: str) -> list[str]:
    """Wait (bounded) until every result is ready; return their states, in order."""

    def pending() -> int:
        return sum(1 for r in results if not r.ready())

    # a gentle poll: the upstream answers from a thread of this very process
    wait_until(lambda: pending() == 0, timeout=timeout, interval=0.5, what=what)
    return [r.state for r in results]


def calls_under(upstream: Upstream, prefix: str) -> list[RequestRecord]:
    """The upstream's records of calls to ``prefix`` or below it, whichever script answered
    them (``Upstream.requests(prefix)`` counts only those answered by the script of
    ``prefix``)."""
    return [r for r in upstream.requests() if r.path == prefix or r.path.startswith(prefix + "/")]


def log_lines(workers: Iterable[CeleryWorker], needle: str) -> list[str]:
    """Every line of the workers' logs that contains ``needle``."""
    return [line for w in workers for line in w.log_text().splitlines() if needle in line]


def windows(times: Sequence[float], width: float = 1.0) -> int:
    """The most of ``times`` inside one window ``[t, t + width)``, over every window.

    The busiest window can always be slid to start at one of the times, so checking the
    window that starts at each time checks them all.
    """
    ordered = sorted(times)
    best = 0
    end = 0
    for start_index, start in enumerate(ordered):
        end = max(end, start_index)
        while end < len(ordered) and ordered[end] < start + width:
            end += 1
        best = max(best, end - start_index)
    return best


def least_span(calls: int, interval: float) -> float:
    """The least time from the first to the last of ``calls`` calls let through by a rate
    limit of one call per ``interval``, as the upstream sees them.

    The limiter spaces its grants by ``interval`` but lets one come up to ``SLOT_SLACK`` of
    an interval early (arrival jitter costs no slot), so the grants span at least
    ``calls - 1 - SLOT_SLACK`` intervals; one interval more is left for the calls' own
    start (the first call of a process opens its connection).
    """
    return (calls - 2 - SLOT_SLACK) * interval


def note(request: pytest.FixtureRequest, **figures: object) -> None:
    """Keep measured figures with the test's report (``user_properties``, in JUnit XML)."""
    request.node.user_properties.extend(figures.items())
