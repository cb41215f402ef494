"""Scenarios 3 (permanent errors) and 4 (Retry-After).

Permanent: half the tasks are answered 400, half 401; a call beyond the first per task is
wasted. Plain Celery is written carefully (4xx raises an exception outside
``autoretry_for``); the common shortcut, ``raise_for_status`` under
``autoretry_for=HTTPError``, is shown beside it for a bounded time.

Retry-After: for a few seconds the upstream answers ``429`` with ``Retry-After: N``, then
200. A call is early when its task had been told to wait and the time was not up yet.
"""

from __future__ import annotations

from typing import Any

from benchmarks.apps import plain, resilient
from benchmarks.measure import by_path, early_calls
from benchmarks.params import Params
from benchmarks.report import Outcome, Row
from benchmarks.rig import SIDES, Rig, Side
from example_project.upstream import Response

__all__ = ["run_permanent", "run_retry_after"]

NODES, CONCURRENCY = 2, 2
#: Calls already past the gates when the first 429 was answered are not counted as ignoring it.
IN_FLIGHT_GRACE = 0.2


def _permanent_side(
    rig: Rig, side: Side, task: Any, label: str, tasks: int, timeout: float
) -> dict[str, int]:
    rig.reset()
    queue, prefix = f"permanent.{label}", f"/permanent/{label}"
    for status in (400, 401):
        rig.upstream.script(f"{prefix}/{status}", [], then=status)
    with rig.nodes(side, queue, count=NODES, concurrency=CONCURRENCY):
        calls = [(f"{rig.upstream.url}{prefix}/{(400, 401)[i % 2]}/{i}",) for i in range(tasks)]
        ids = rig.publish(task, calls, queue=queue)
        states = list(rig.wait_done(ids, timeout=timeout).values())
        records = rig.records(prefix)
    return {
        "calls": len(records),
        "wasted": len(records) - len(by_path(records)),
        "failed": states.count("FAILURE"),
        "pending": sum(1 for s in states if s not in ("SUCCESS", "FAILURE")),
    }


def run_permanent(rig: Rig, params: Params) -> Outcome:
    """Careful plain Celery, celery-resilience, and the shortcut (bounded in time)."""
    n = params.permanent_tasks
    figures = {
        "plain": _permanent_side(rig, SIDES["plain"], plain.call, "plain", n, 60.0),
        "resilient": _permanent_side(rig, SIDES["resilient"], resilient.call, "resilient", n, 60.0),
        "naive": _permanent_side(
            rig, SIDES["plain"], plain.call_naive, "naive", n, params.naive_window
        ),
    }
    print(f"  permanent: {figures}", flush=True)
    p, r, naive = figures["plain"], figures["resilient"], figures["naive"]
    name = "3 permanent errors"
    rows = [
        Row(name, f"wasted upstream calls, 400/401 ({n} tasks)", str(p["wasted"]),
            str(r["wasted"]), "—", "0", r["wasted"] == 0),
        Row(name, f"… plain with `raise_for_status` (first {params.naive_window:g} s)",
            str(naive["wasted"]), str(r["wasted"]), "—", "0", r["wasted"] == 0),
    ]  # fmt: skip
    notes = [
        f"Permanent errors: careful plain Celery failed {p['failed']} of {n} tasks at once; "
        f"celery-resilience {r['failed']}. With the `raise_for_status` shortcut, "
        f"{naive['pending']} of {n} tasks were still retrying a 4xx after "
        f"{params.naive_window:g} s (up to 8 retries each).",
    ]
    return Outcome("permanent", rows, notes, figures)


def _retry_after_side(
    rig: Rig, side: Side, task: Any, label: str, params: Params
) -> dict[str, int]:
    rig.reset()
    queue, prefix = f"retry_after.{label}", f"/retry_after/{label}"
    wait = params.ra_seconds
    with rig.nodes(side, queue, count=NODES, concurrency=CONCURRENCY):
        phases = [(params.ra_phase, Response(429, retry_after=wait)), (None, 200)]
        rig.upstream.phases(prefix, phases)
        calls = [(f"{rig.upstream.url}{prefix}/{i}",) for i in range(params.ra_tasks)]
        ids = rig.publish(task, calls, queue=queue)
        states = list(rig.wait_done(ids, timeout=120.0).values())
        records = rig.records(prefix)
    told = [r for r in records if r.status == 429]
    first = min((r.end for r in told), default=0.0)
    return {
        "calls": len(records),
        "answered_429": len(told),
        "early": early_calls(records, wait),
        "cluster_early": sum(
            1 for r in records if first + IN_FLIGHT_GRACE <= r.start < first + wait
        ),
        "succeeded": states.count("SUCCESS"),
    }


def run_retry_after(rig: Rig, params: Params) -> Outcome:
    """Both sides against the same 429 phase."""
    figures = {
        "plain": _retry_after_side(rig, SIDES["plain"], plain.call, "plain", params),
        "resilient": _retry_after_side(
            rig, SIDES["resilient"], resilient.call_ra, "resilient", params
        ),
        "breaker_only": _retry_after_side(
            rig, SIDES["resilient"], resilient.call, "breaker_only", params
        ),
    }
    print(f"  retry-after: {figures}", flush=True)
    p, r, b = figures["plain"], figures["resilient"], figures["breaker_only"]
    name = "4 Retry-After"
    wait = params.ra_seconds
    rows = [
        Row(name, f"calls before the task's `Retry-After: {wait}` elapsed", str(p["early"]),
            str(r["early"]), "—", "0", r["early"] == 0),
        Row(name, "… the same, resilient task without a limiter (each task is told)",
            str(p["early"]), str(b["early"]), "—", "0", b["early"] == 0),
        Row(name, "… by any task, after the first 429 (cluster-wide)",
            str(p["cluster_early"]), str(r["cluster_early"]), "—", "—", None),
    ]  # fmt: skip
    notes = [
        f"Retry-After: {params.ra_tasks} tasks; the upstream answers 429 with "
        f"`Retry-After: {wait}` for {params.ra_phase:g} s, then 200. Plain Celery ignores the "
        f"header (it made {p['calls']} calls, {p['answered_429']} answered 429); "
        f"celery-resilience made {r['calls']} ({r['answered_429']} answered 429), and "
        f"{b['calls']} ({b['answered_429']} answered 429) without a limiter. The "
        "cluster-wide row counts calls by any task that started more than "
        f"{IN_FLIGHT_GRACE:g} s after the first 429 and before its `Retry-After` elapsed; "
        "the resilient task has a `RateLimit`, which a 429 pauses for every worker.",
    ]
    return Outcome("retry_after", rows, notes, figures)
