"""The demo's closing report as plain data (written with ``--report-json``).

Every upstream figure is counted from the upstream's own request log: a request belongs to
the baseline when its path starts with ``/baseline``, and to the phase in force when it
arrived (seconds from the story's start).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from example_project.monitor import OUTCOMES, SIDES, BreakerChange, Sent

if TYPE_CHECKING:
    from example_project.story import Story
    from example_project.upstream import RequestRecord

__all__ = ["build_report", "median_of_all", "phase_of", "side_of", "trace_log"]

BASELINE_PREFIX = "/baseline"
_LOG_LINE = re.compile(
    r"^\[(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}): \w+/[^\]]*\] "
    r"(?:[\w.]+\[[0-9a-f-]+\]: )?(?P<message>.*?)(?: \[trace_id=[^\]]*\])?$"
)


def side_of(path: str) -> str:
    """``"baseline"`` for a plain-Celery call, else ``"resilient"``."""
    return "baseline" if path.startswith(BASELINE_PREFIX + "/") else "resilient"


def api_of(path: str) -> str:
    """The API a path belongs to (``billing``, ``crm``)."""
    path = path.removeprefix(BASELINE_PREFIX)
    return path.strip("/").split("/", 1)[0]


def phase_of(bounds: Sequence[dict[str, Any]], t: float) -> str:
    """The name of the phase in force ``t`` seconds into the story."""
    for bound in bounds:
        if t < bound["end"]:
            return str(bound["name"])
    return str(bounds[-1]["name"])


def _status(record: RequestRecord) -> str:
    return "reset" if record.status is None else str(record.status)


def _burst_rate(records: Sequence[RequestRecord], paths: set[str]) -> dict[str, Any]:
    """How fast the burst of CRM syncs reached the upstream: first call of each, per second."""
    firsts: dict[str, float] = {}
    for r in records:
        if r.path in paths and r.path not in firsts:
            firsts[r.path] = r.start
    starts = sorted(firsts.values())
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    return {
        "calls": len(starts),
        "seconds": round(span, 2),
        "per_second": round((len(starts) - 1) / span, 2) if span > 0 else None,
    }


def _calls(
    records: Sequence[RequestRecord], bounds: Sequence[dict[str, Any]], t0: float,
    burst: Sequence[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in SIDES:
        mine = [r for r in records if side_of(r.path) == side]
        by_phase: dict[str, dict[str, dict[str, int]]] = {b["name"]: {} for b in bounds}
        for r in mine:
            apis = by_phase[phase_of(bounds, r.start - t0)]
            statuses = apis.setdefault(api_of(r.path), {})
            statuses[_status(r)] = statuses.get(_status(r), 0) + 1
        base = BASELINE_PREFIX if side == "baseline" else ""
        out[side] = {
            "total": len(mine),
            "by_phase": {
                name: sum(sum(s.values()) for s in apis.values())
                for name, apis in by_phase.items()
            },
            "by_phase_api_status": by_phase,
            "by_api": dict(Counter(api_of(r.path) for r in mine)),
            "crm_burst": _burst_rate(mine, {f"{base}/crm/customers/{c}" for c in burst}),
        }
    return out


def _tasks(sent: Sequence[Sent]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in SIDES:
        mine = [s for s in sent if s.side == side]
        outcomes = Counter(s.outcome for s in mine)
        out[side] = {"sent": len(mine), **{o: outcomes.get(o, 0) for o in OUTCOMES}}
    return out


def _outage_drain(sent: Sequence[Sent], bounds: Sequence[dict[str, Any]], t0: float
                  ) -> dict[str, Any]:
    """How soon after the outage the billing tasks sent during it were done."""
    outage = next(b for b in bounds if b["name"] == "outage")
    end = t0 + outage["end"]
    out: dict[str, Any] = {"outage_end": outage["end"]}
    for side in SIDES:
        caught = [
            s for s in sent
            if s.side == side and s.send.phase == "outage" and s.send.kind != "crm"
        ]
        done = [
            max(s.done_at - end, 0.0) if s.outcome == "succeeded" and s.done_at is not None
            else None
            for s in caught
        ]  # fmt: skip
        after = [d for d in done if d is not None]
        median = median_of_all(done)
        out[side] = {
            "tasks": len(caught),
            "succeeded": len(after),
            "unfinished": sum(1 for s in caught if s.outcome == "unfinished"),
            "median_after": round(median, 2) if median is not None else None,
            "max_after": round(max(after), 2) if after else None,
        }
    return out


def median_of_all(times: Sequence[float | None]) -> float | None:
    """The median over every task, those not done (None) counted as later than any done.

    So that two sides compare like with like: a side whose slow tasks are still waiting
    does not look faster for it. None when fewer than half of the tasks were done.
    """
    if not times:
        return None
    ranked = sorted(times, key=lambda t: (t is None, t or 0.0))
    n = len(ranked)
    middle = ranked[(n - 1) // 2 : n // 2 + 1]
    if any(t is None for t in middle):
        return None
    return statistics.mean(t for t in middle if t is not None)


def _trace(sent: Sequence[Sent], records: Sequence[RequestRecord],
           bounds: Sequence[dict[str, Any]], t0: float) -> dict[str, Any] | None:
    """The attempts of one resilient charge that was retried and then succeeded."""
    by_path: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_path.setdefault(r.path, []).append(r)
    best: tuple[int, Sent, list[RequestRecord]] | None = None
    for s in sent:
        if s.side != "resilient" or s.send.kind != "charge" or s.outcome != "succeeded":
            continue
        calls = by_path.get(f"/billing/invoices/{s.send.args[0]}/charge", [])
        if len(calls) > (best[0] if best else 1):
            best = (len(calls), s, calls)
    if best is None:
        return None
    _, chosen, calls = best
    attempts: list[dict[str, Any]] = [
        {
            "at": round(r.start - t0, 3),
            "phase": phase_of(bounds, r.start - t0),
            "status": r.status,
            "traceparent": r.header("traceparent"),
            "idempotency_key": r.header("Idempotency-Key"),
        }
        for r in calls
    ]
    parents: list[str] = [a["traceparent"] or "" for a in attempts]
    invoice = str(chosen.send.args[0])
    twin = by_path.get(f"{BASELINE_PREFIX}/billing/invoices/{invoice}/charge", [])
    twin_task = next(
        (s for s in sent if s.side == "baseline" and s.send.args == chosen.send.args), None
    )
    return {
        "task": "example.charge_invoice",
        "invoice": invoice,
        "task_id": chosen.task_id,
        "trace_id": parents[0].split("-")[1] if parents[0].count("-") == 3 else None,
        "one_trace": len({p.split("-")[1] for p in parents if p.count("-") == 3}) == 1,
        "spans": len({p.split("-")[2] for p in parents if p.count("-") == 3}),
        "one_key": len({a["idempotency_key"] for a in attempts}) == 1,
        "attempts": attempts,
        "baseline": {
            "calls": len(twin),
            "statuses": [r.status for r in twin],
            "outcome": twin_task.outcome if twin_task is not None else None,
        },
    }


def _timeline(changes: Sequence[BreakerChange], bounds: Sequence[dict[str, Any]], t0: float
              ) -> list[dict[str, Any]]:
    return [
        {
            "at": round(c.at - t0, 2),
            "phase": phase_of(bounds, c.at - t0),
            "breaker": c.name,
            "from": c.old,
            "to": c.new,
            "failure_rate": round(c.failure_rate, 3),
            "calls": c.calls,
        }
        for c in sorted(changes, key=lambda c: c.at)
    ]


def build_report(
    *,
    story: Story,
    t0: float,
    story_end: float,
    records: Sequence[RequestRecord],
    sent: Sequence[Sent],
    changes: Sequence[BreakerChange],
    counters: dict[str, int] | None,
    timing: dict[str, float],
    quick: bool,
    skip_baseline: bool,
) -> dict[str, Any]:
    """The closing report: plain JSON values."""
    bounds = [
        {"name": name, "start": round(start, 3),
         "end": round(end if end is not None else story_end - t0, 3)}
        for name, start, end in story.bounds()
    ]
    return {
        "version": 1,
        "quick": quick,
        "baseline": not skip_baseline,
        "started_at": t0,
        "phases": bounds,
        "tasks": _tasks(sent),
        "calls": _calls(records, bounds, t0, [
            str(s.args[0]) for s in story.sends() if s.at == 0 and s.kind == "crm"
        ]),
        "upstream": {
            "requests": len(records),
            "by_prefix": dict(Counter(r.prefix for r in records)),
        },
        "outage_drain": _outage_drain(sent, bounds, t0),
        "breaker_timeline": _timeline(changes, bounds, t0),
        "trace": _trace(sent, records, bounds, t0),
        "counters": counters,
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }


def trace_log(logdir: Path, trace_id: str, t0: float, limit: int = 20) -> list[dict[str, Any]]:
    """What the workers logged under ``trace_id`` (their own lines, not Celery's echoes)."""
    found: list[dict[str, Any]] = []
    for path in sorted(logdir.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = _LOG_LINE.match(line) if trace_id in line else None
            if match is None or match["message"].startswith("Task "):
                continue
            when = datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S").timestamp()
            at = when + int(match["ms"]) / 1000 - t0
            found.append({"at": round(at, 3), "message": match["message"]})
    found.sort(key=lambda entry: entry["at"])
    return found[:limit]
