"""Scenario 6, a degraded upstream: partial failure, overload and outage; three tenants.

Tasks are sent at a steady rate (50/s for 20 s at full size) to 2 nodes x 2 prefork
processes per side, while the upstream is degraded for a while (25 s), then healthy:

- *partial 40 %* and *partial 80 %*: that share of calls gets 503 at random, whatever
  the load;
- *overload*: the upstream serves 30 calls a second and answers 503 to the rest at once;
- *outage*: every call gets 503 for 20 s.

Both sides use their defaults: plain Celery's ``autoretry_for`` with jittered backoff
and 8 retries, celery-resilience's default ``CircuitBreaker("upstream")`` and 8 retries.
Measured at the upstream: calls per task, 2xx a second during the degradation (goodput),
tasks done during it, the time until the last task is done, tasks lost. Then the
three-tenant case of :mod:`benchmarks.tenants`: per-tenant rates against one busy tenant.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.apps import plain, resilient
from benchmarks.measure import success_times
from benchmarks.params import Params
from benchmarks.report import Outcome, Row, fmt
from benchmarks.rig import SIDES, Rig
from benchmarks.tenants import RATE, TENANTS, TenantsRun, measure_tenants

__all__ = ["Case", "DegradedRun", "run_degraded", "summary", "targets_met"]

NODES, CONCURRENCY = 2, 2
#: How long after the last task was sent a side may take to finish (plain Celery's
#: retries wait up to 60 s each).
_SETTLE = 180.0


@dataclass(frozen=True)
class Case:
    """One way of being degraded."""

    key: str
    title: str
    share: float = 0.0
    #: calls a second the upstream serves, as a share of the rate tasks are sent at
    capacity: float | None = None
    #: how long the degradation lasts (None: the scenario's ``degraded_seconds``)
    seconds: float | None = None


CASES = (
    Case("partial40", "partial failure, 40 % of calls 503 at random", share=0.4),
    Case("partial80", "partial failure, 80 % of calls 503 at random", share=0.8),
    Case("overload", "overload: 60 % of the send rate served, the rest 503 at once", capacity=0.6),
    Case("outage", "full outage: every call 503 for 20 s", share=1.0, seconds=20.0),
)


@dataclass(frozen=True)
class DegradedRun:
    """One side's figures for one case."""

    tasks: int
    calls: int
    degraded_for: float
    done_during: int
    ok_during: int
    calls_during: int
    last_done: float
    last_after_heal: float
    succeeded: int
    failed: int
    unfinished: int

    @property
    def calls_per_task(self) -> float:
        """Upstream calls per task sent."""
        return self.calls / self.tasks

    @property
    def goodput(self) -> float:
        """2xx answers a second while the upstream was degraded."""
        return self.ok_during / self.degraded_for

    @property
    def lost(self) -> int:
        """Tasks that did not succeed."""
        return self.tasks - self.succeeded


def _send_paced(rig: Rig, task: Any, urls: list[str], *, queue: str, rate: float) -> list[str]:
    """Publish one task per URL at ``rate`` a second (in steps of 0.1 s)."""
    ids: list[str] = []
    began = time.monotonic()
    per_step = max(1, round(rate / 10))
    with task.app.producer_or_acquire() as producer:
        for start in range(0, len(urls), per_step):
            due = began + start / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, 1.0))
            for url in urls[start : start + per_step]:
                ids.append(task.apply_async((url,), queue=queue, producer=producer).id)
    return ids


def measure_case(
    rig: Rig, task: Any, case: Case, *, prefix: str, queue: str, params: Params
) -> DegradedRun:
    """Degrade the upstream, send the tasks at the scenario's rate, wait for them."""
    seconds = case.seconds if case.seconds is not None else params.degraded_seconds
    tasks = int(params.degraded_rate * params.degraded_send_seconds)
    t0 = time.time()
    capacity = None if case.capacity is None else case.capacity * params.degraded_rate
    rig.upstream.degrade(prefix, seconds, share=case.share, capacity=capacity, seed=11)
    healed = t0 + seconds
    urls = [f"{rig.upstream.url}{prefix}/{i}" for i in range(tasks)]
    ids = _send_paced(rig, task, urls, queue=queue, rate=params.degraded_rate)
    states = rig.wait_done(ids, timeout=seconds + _SETTLE)
    records = rig.records(prefix)
    done = success_times(records)
    during = [r for r in records if r.start < healed]
    counts = list(states.values())
    last = max(done.values()) if done else float("nan")
    return DegradedRun(
        tasks=tasks,
        calls=len(records),
        degraded_for=seconds,
        done_during=sum(1 for t in done.values() if t <= healed),
        ok_during=sum(1 for r in during if r.status is not None and 200 <= r.status < 300),
        calls_during=len(during),
        last_done=last - t0,
        last_after_heal=last - healed,
        succeeded=counts.count("SUCCESS"),
        failed=counts.count("FAILURE"),
        unfinished=sum(1 for s in counts if s not in ("SUCCESS", "FAILURE")),
    )


def _rows(case: Case, p: DegradedRun, r: DegradedRun) -> list[Row]:
    name = f"6 {case.key}"
    per_task = Row(name, "upstream calls per task", fmt(p.calls_per_task, 2),
                   fmt(r.calls_per_task, 2))  # fmt: skip
    during = Row(name, f"tasks done during the {fmt(r.degraded_for, 0)} s degradation",
                 str(p.done_during), str(r.done_during))  # fmt: skip
    goodput = Row(name, "goodput during it (2xx/s)", fmt(p.goodput), fmt(r.goodput))
    drain = Row(name, "start → last task done", fmt(p.last_done, unit=" s"),
                fmt(r.last_done, unit=" s"))  # fmt: skip
    lost = Row(name, f"tasks lost (of {r.tasks})", str(p.lost), str(r.lost), target="0",
               met=r.lost == 0)  # fmt: skip
    if case.key == "partial40":
        share = r.done_during / r.tasks
        during = Row(name, during.measure, during.plain, f"{r.done_during} ({share:.0%})",
                     target="≥ 85 %", met=share >= 0.85)  # fmt: skip
        per_task = Row(name, per_task.measure, per_task.plain, per_task.resilient,
                       target="≤ 1.9", met=r.calls_per_task <= 1.9)  # fmt: skip
    elif case.key == "overload":
        per_task = Row(name, per_task.measure, per_task.plain, per_task.resilient,
                       target="≤ 1.3", met=r.calls_per_task <= 1.3)  # fmt: skip
        goodput = Row(name, goodput.measure, goodput.plain, goodput.resilient,
                      target="≥ 27/s", met=r.goodput >= 27)  # fmt: skip
    elif case.key == "outage":
        return [
            Row(name, "upstream calls during the outage", str(p.calls_during),
                str(r.calls_during), target="≤ 30", met=r.calls_during <= 30),
            Row(name, "upstream healed → last task done", fmt(p.last_after_heal, unit=" s"),
                fmt(r.last_after_heal, unit=" s"), target="≤ 15 s",
                met=r.last_after_heal <= 15),
            per_task,
            lost,
        ]  # fmt: skip
    return [per_task, during, goodput, drain, lost]


def targets_met(case: Case, run: DegradedRun) -> bool:
    """Whether the resilient side's ``run`` of ``case`` meets every target the scenario
    sets for it."""
    return all(row.met is not False for row in _rows(case, run, run))


def run_degraded(rig: Rig, params: Params) -> Outcome:
    """Every case, both sides, one after the other."""
    rows: list[Row] = []
    data: dict[str, Any] = {}
    for case in CASES:
        runs: dict[str, DegradedRun] = {}
        for key, task in (("plain", plain.call), ("resilient", resilient.call)):
            rig.reset()
            queue = f"degraded.{case.key}.{key}"
            with rig.nodes(SIDES[key], queue, count=NODES, concurrency=CONCURRENCY):
                runs[key] = measure_case(
                    rig, task, case, prefix=f"/degraded/{case.key}/{key}", queue=queue,
                    params=params,
                )  # fmt: skip
            print(f"  {case.key} {key}: {summary(runs[key])}", flush=True)
        rows.extend(_rows(case, runs["plain"], runs["resilient"]))
        data[case.key] = {k: {**asdict(v), "calls_per_task": v.calls_per_task,
                              "goodput": v.goodput} for k, v in runs.items()}  # fmt: skip
    tenants: dict[str, TenantsRun] = {}
    for key, task in (("plain", plain.call_limited), ("resilient", resilient.call_tenant)):
        rig.reset()
        queue = f"degraded.tenants.{key}"
        with rig.nodes(SIDES[key], queue, count=NODES, concurrency=CONCURRENCY):
            tenants[key] = measure_tenants(
                rig, task, prefix=f"/degraded/tenants/{key}", queue=queue, params=params
            )
        print(f"  tenants {key}: {tenants[key]}", flush=True)
    rows.extend(_tenant_rows(tenants["plain"], tenants["resilient"]))
    data["tenants"] = {k: asdict(v) for k, v in tenants.items()}
    tasks = int(params.degraded_rate * params.degraded_send_seconds)
    notes = [
        f"Degraded upstream: {tasks} tasks sent at {params.degraded_rate:g}/s over "
        f"{params.degraded_send_seconds:g} s to {NODES} nodes x {CONCURRENCY} prefork "
        f"processes per side; the upstream degraded from the first task for "
        f"{params.degraded_seconds:g} s (the outage: 20 s), then healthy. "
        + "; ".join(c.title for c in CASES)
        + '. Both sides with their defaults (resilient: `CircuitBreaker("upstream")`).',
        f"Three tenants: a and b send {params.tenant_tasks} tasks each, c ten times as "
        f'many, interleaved, to a healthy upstream; plain Celery\'s `rate_limit="10/s"` '
        f"(per worker node, all tenants together) against "
        f'`RateLimit("tenant", "10/s", key=tenant)` (per tenant, across the cluster); '
        f"each tenant's calls a second over a steady window, and when a and b were done.",
    ]
    return Outcome("degraded", rows, notes, data)


def _tenant_rows(p: TenantsRun, r: TenantsRun) -> list[Row]:
    def rates(run: TenantsRun) -> str:
        return " / ".join(fmt(run.rates[t]) for t in TENANTS)

    fair = all(abs(rate - RATE) <= 0.05 * RATE for rate in r.rates.values())
    return [
        Row("6 tenants", "calls a second of a / b / c (c: 10x the backlog)", rates(p), rates(r),
            target="10 ± 5 % each", met=fair),
        Row("6 tenants", "sent → a and b done", fmt(p.small_done, unit=" s"),
            fmt(r.small_done, unit=" s")),
        Row("6 tenants", "tasks of a and b lost", str(p.lost_small), str(r.lost_small),
            target="0", met=r.lost_small == 0),
    ]  # fmt: skip


def summary(run: DegradedRun) -> str:
    """One side's run of a case, in a line."""
    return (
        f"{run.calls_per_task:.3f} calls/task, {run.done_during} done during, goodput "
        f"{run.goodput:.1f}/s, {run.calls_during} calls during, last {run.last_done:.1f} s "
        f"({run.last_after_heal:.1f} s after healing), lost {run.lost}"
    )
