"""Scenario 1, outage (with scenario 5, herd), and the breaker sweep.

200 tasks each GET their own path of an upstream that answers 503 for 20 s, then 200.
Plain Celery retries on its backoff; celery-resilience sits behind the default
``CircuitBreaker("upstream")``. Measured at the upstream: calls answered 503 (the outage),
the time from recovery until each task's first 200, and the most calls in any 100 ms after
recovery (the herd). The sweep repeats the resilient side for each breaker in
:data:`benchmarks.apps.resilient.SWEEP`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from benchmarks.apps import plain, resilient
from benchmarks.measure import busiest_window, percentile, success_times
from benchmarks.params import Params
from benchmarks.report import Outcome, Row, fmt, ratio
from benchmarks.rig import SIDES, Rig
from celery_resilience import CircuitBreaker

__all__ = ["OutageRun", "run_outage", "run_sweep"]

#: Nodes x processes, as in the breaker's end-to-end test.
NODES, CONCURRENCY = 2, 2
#: The goal: calls during the outage, last and median seconds after recovery.
GOAL_CALLS, GOAL_LAST, GOAL_MEDIAN = 10, 15.0, 8.0
#: Plain Celery's last retry may come 60 s (its backoff cap) after recovery.
_SETTLE = 150.0


@dataclass(frozen=True)
class OutageRun:
    """One side's figures for one outage."""

    tasks: int
    calls: int
    outage_calls: int
    recovery: tuple[float, ...]
    herd: int
    succeeded: int
    failed: int
    unfinished: int

    @property
    def last(self) -> float:
        """Seconds from recovery until the last task succeeded."""
        return max(self.recovery) if self.recovery else float("nan")

    @property
    def median(self) -> float:
        """The median task's seconds from recovery to success."""
        return percentile(self.recovery, 0.5)

    @property
    def lost(self) -> int:
        """Tasks that did not succeed (failed, or unfinished when the wait ended)."""
        return self.tasks - self.succeeded

    def meets_goal(self) -> bool:
        """Whether the goal holds: few calls, quick and complete recovery."""
        return (
            self.outage_calls <= GOAL_CALLS
            and self.last <= GOAL_LAST
            and self.median <= GOAL_MEDIAN
            and self.lost == 0
        )


def measure_outage(
    rig: Rig, task: object, *, prefix: str, queue: str, tasks: int, outage: float
) -> OutageRun:
    """Run one outage against workers already consuming ``queue``."""
    before = time.time()
    rig.upstream.phases(prefix, [(outage, 503), (None, 200)])
    recovery = (before + time.time()) / 2 + outage
    calls = [(f"{rig.upstream.url}{prefix}/{i}",) for i in range(tasks)]
    ids = rig.publish(task, calls, queue=queue)
    states = rig.wait_done(ids, timeout=outage + _SETTLE)
    records = rig.records(prefix)
    after = [r.start for r in records if r.start >= recovery]
    done = success_times(records)
    counts = list(states.values())
    return OutageRun(
        tasks=tasks,
        calls=len(records),
        outage_calls=sum(1 for r in records if r.status == 503),
        recovery=tuple(sorted(t - recovery for t in done.values())),
        herd=busiest_window(after, 0.1) if after else 0,
        succeeded=counts.count("SUCCESS"),
        failed=counts.count("FAILURE"),
        unfinished=sum(1 for s in counts if s not in ("SUCCESS", "FAILURE")),
    )


def run_outage(rig: Rig, params: Params) -> Outcome:
    """Both sides through the same outage, one after the other."""
    runs: dict[str, OutageRun] = {}
    for key, task in (("plain", plain.call), ("resilient", resilient.call)):
        rig.reset()
        queue = f"outage.{key}"
        with rig.nodes(SIDES[key], queue, count=NODES, concurrency=CONCURRENCY):
            runs[key] = measure_outage(
                rig,
                task,
                prefix=f"/outage/{key}",
                queue=queue,
                tasks=params.outage_tasks,
                outage=params.outage_seconds,
            )
        print(f"  outage {key}: {_summary(runs[key])}", flush=True)
    p, r = runs["plain"], runs["resilient"]
    share = r.outage_calls / p.outage_calls if p.outage_calls else float("nan")
    name = "1 outage"
    seconds = f"{params.outage_seconds:g} s"
    rows = [
        Row(name, f"upstream calls during the {seconds} outage", str(p.outage_calls),
            str(r.outage_calls), f"{share:.1%}", "≤ 5 % of plain", share <= 0.05),
        Row(name, "calls during the outage (goal)", str(p.outage_calls),
            str(r.outage_calls), "—", f"≤ about {GOAL_CALLS}", r.outage_calls <= GOAL_CALLS),
        Row(name, "recovery → last task succeeded", fmt(p.last, unit=" s"),
            fmt(r.last, unit=" s"), ratio(r.last, p.last), f"≤ {GOAL_LAST:g} s (goal)",
            r.last <= GOAL_LAST),
        Row(name, "recovery → median task succeeded", fmt(p.median, unit=" s"),
            fmt(r.median, unit=" s"), ratio(r.median, p.median), f"≤ {GOAL_MEDIAN:g} s (goal)",
            r.median <= GOAL_MEDIAN),
        Row(name, f"tasks lost (of {params.outage_tasks})", str(p.lost), str(r.lost), "—", "0",
            r.lost == 0),
        Row("5 herd", "most upstream calls in any 100 ms after recovery", str(p.herd),
            str(r.herd), ratio(r.herd, p.herd), "—", None),
    ]  # fmt: skip
    notes = [
        f"Outage: {params.outage_tasks} tasks, {NODES} nodes x {CONCURRENCY} prefork processes "
        f"per side; upstream 503 for {seconds}, then 200. Plain Celery made "
        f"{p.calls} calls in all ({p.failed} tasks failed for lack of retries, "
        f"{p.unfinished} unfinished); celery-resilience {r.calls} ({r.failed} failed, "
        f"{r.unfinished} unfinished). Resilient side: the library's default breaker, "
        f"`{_describe(resilient.call.breaker)}`.",
    ]
    data = {key: {**asdict(run), "last": run.last, "median": run.median}
            for key, run in runs.items()}  # fmt: skip
    return Outcome("outage", rows, notes, data)


def run_sweep(rig: Rig, params: Params) -> Outcome:
    """The resilient side of the outage for every breaker of the sweep, ``sweep_reps``
    times each (the settings interleaved); a cell lists every run."""
    rig.reset()
    queue = "sweep"
    runs: dict[str, list[OutageRun]] = {resilient.sweep_label(b): [] for b in resilient.SWEEP}
    with rig.nodes(SIDES["resilient"], queue, count=NODES, concurrency=CONCURRENCY):
        for rep in range(params.sweep_reps):
            for label, found in runs.items():
                found.append(
                    measure_outage(
                        rig,
                        resilient.sweep_tasks[label],
                        prefix=f"/sweep/{label}/{rep}",
                        queue=queue,
                        tasks=params.outage_tasks,
                        outage=params.outage_seconds,
                    )
                )
                print(f"  sweep {label} #{rep + 1}: {_summary(found[-1])}", flush=True)
    base = resilient.SWEEP[0]
    lines = [
        "## Breaker sweep (outage scenario, resilient side)",
        "",
        f"{params.outage_tasks} tasks, upstream 503 for {params.outage_seconds:g} s then 200, "
        f"{params.sweep_reps} run(s) per setting (each cell lists them, in order); otherwise "
        f"the library's defaults (failure_rate {base.failure_rate:g}, window {base.window:g} s, "
        f"half_open_calls {base.half_open_calls}); growth: open_for doubles on each re-open up "
        f"to {resilient.GROWTH_CAP:g} s. Goal, met when every run meets it: calls ≤ "
        f"about {GOAL_CALLS}, last ≤ {GOAL_LAST:g} s, median ≤ {GOAL_MEDIAN:g} s, none lost.",
        "",
        "| open_for | minimum_calls | growth | calls during outage | recovery: last (s) | "
        "recovery: median (s) | herd (100 ms) | lost | goal |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for breaker in resilient.SWEEP:
        found = runs[resilient.sweep_label(breaker)]

        def cells(figure: Callable[[OutageRun], object], found: list[OutageRun] = found) -> str:
            return " / ".join(str(figure(run)) for run in found)

        lines.append(
            f"| {breaker.open_for:g} s | {breaker.minimum_calls} | "
            f"{'yes' if breaker.open_for_max is not None else 'no'} | "
            f"{cells(lambda r: r.outage_calls)} | {cells(lambda r: fmt(r.last))} | "
            f"{cells(lambda r: fmt(r.median))} | {cells(lambda r: r.herd)} | "
            f"{cells(lambda r: r.lost)} | "
            f"{'met' if all(r.meets_goal() for r in found) else 'missed'} |"
        )
    data = {label: [{**asdict(run), "last": run.last, "median": run.median} for run in found]
            for label, found in runs.items()}  # fmt: skip
    return Outcome("sweep", data=data, section="\n".join(lines))


def _describe(breaker: CircuitBreaker) -> str:
    fields = ("failure_rate", "minimum_calls", "window", "open_for", "open_for_max",
              "half_open_calls", "probe_lease")  # fmt: skip
    values = ", ".join(f"{f}={getattr(breaker, f)!r}" for f in fields)
    return f"CircuitBreaker({breaker.name!r}, {values})"


def _summary(run: OutageRun) -> str:
    return (
        f"{run.outage_calls} calls during the outage, last {fmt(run.last)} s, "
        f"median {fmt(run.median)} s after recovery, herd {run.herd}, lost {run.lost}"
    )
