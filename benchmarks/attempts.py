"""The library's own CPU time per attempt, measured in this process.

An attempt runs as a prefork pool process runs it (the node's counters installed, as in a
worker): a request is pushed on the task, then the task is called, which goes through
``ResilientTask.__call__`` (gates, body, record) against the rig's state Redis. Nothing
else of Celery runs, so the figure is what celery-resilience adds to one task, client
side, free of the worker's own cost and much less moved by other load than a drain
rate::

    with rig.upstream_paused():  # no serving thread beside the loop
        cpu_per_attempt(resilient.noop, attempts=3000, reps=5)    # microseconds, best run
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
import uuid
from typing import Any

from benchmarks.pool_request import pool_request
from celery_resilience.observability import counters

__all__ = ["as_in_a_worker", "cpu_per_attempt", "profile_attempts", "run_attempt"]


def run_attempt(task: Any) -> None:
    """One attempt of ``task`` (no arguments), as a worker's pool process runs it."""
    task.push_request(
        **pool_request(uuid.uuid4()),
        args=(),
        kwargs={},
        called_directly=False,
        is_eager=False,
    )
    try:
        task()
    finally:
        task.pop_request()


def as_in_a_worker() -> None:
    """The node's counters installed, as a worker's bootstep installs them: a worker's
    attempts count into them."""
    counters.install()


def cpu_per_attempt(task: Any, *, attempts: int, reps: int) -> float:
    """CPU microseconds per attempt: the best of ``reps`` runs of ``attempts``, after a
    warm-up (connections made, scripts loaded)."""
    as_in_a_worker()
    for _ in range(200):
        run_attempt(task)
    best = float("inf")
    for _ in range(reps):
        began = time.process_time()
        for _ in range(attempts):
            run_attempt(task)
        best = min(best, (time.process_time() - began) / attempts * 1e6)
    return best


def profile_attempts(task: Any, *, attempts: int, top: int = 25) -> str:
    """cProfile (on CPU time) of ``attempts`` attempts: the top functions by own time,
    then by cumulative time."""
    as_in_a_worker()
    for _ in range(200):
        run_attempt(task)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(attempts):
        run_attempt(task)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
