"""Scenario 2, global rate: 2 worker nodes, a target of 10 calls a second.

Plain Celery's ``rate_limit="10/s"`` is enforced per worker node; celery-resilience's
``RateLimit("api", "10/s")`` across the cluster. Measured at a healthy upstream: the
aggregate rate from the first call to the last, and the busiest 1-second window.
"""

from __future__ import annotations

from benchmarks.apps import plain, resilient
from benchmarks.measure import busiest_window, per_second, steady_rate
from benchmarks.params import Params
from benchmarks.report import Outcome, Row, fmt, ratio
from benchmarks.rig import SIDES, Rig

__all__ = ["run_rate"]

TARGET = 10.0
TOLERANCE = 0.03
NODES, CONCURRENCY = 2, 2


def run_rate(rig: Rig, params: Params) -> Outcome:
    """Both sides, one after the other, each with fresh nodes and a fresh limiter."""
    figures: dict[str, dict[str, float]] = {}
    for key, task in (("plain", plain.call_limited), ("resilient", resilient.call_limited)):
        rig.reset()
        queue, prefix = f"rate.{key}", f"/rate/{key}"
        with rig.nodes(SIDES[key], queue, count=NODES, concurrency=CONCURRENCY):
            calls = [(f"{rig.upstream.url}{prefix}/{i}",) for i in range(params.rate_tasks)]
            ids = rig.publish(task, calls, queue=queue)
            states = rig.wait_done(ids, timeout=params.rate_tasks / TARGET * 3 + 30)
            times = [r.start for r in rig.records(prefix)]
        figures[key] = {
            "rate": steady_rate(times),
            "middle_rate": steady_rate(sorted(times)[len(times) // 10 : len(times) * 9 // 10]),
            "per_second": per_second(times),
            "worst": float(busiest_window(times, 1.0)),
            "calls": float(len(times)),
            "succeeded": float(list(states.values()).count("SUCCESS")),
        }
        print(f"  rate {key}: {figures[key]}", flush=True)
    p, r = figures["plain"], figures["resilient"]
    error = abs(r["rate"] - TARGET) / TARGET
    name = "2 global rate"
    rows = [
        Row(name, f"aggregate rate at the upstream (target {TARGET:g}/s, {NODES} nodes)",
            fmt(p["rate"], 2, "/s"), fmt(r["rate"], 2, "/s"), "—",
            f"{TARGET:g}/s ± {TOLERANCE:.0%}", error <= TOLERANCE),
        Row(name, "busiest 1-second window (calls)", fmt(int(p["worst"])),
            fmt(int(r["worst"])), ratio(r["worst"], p["worst"]),
            f"≤ {TARGET + 1:g} (rate + burst)", r["worst"] <= TARGET + 1),
    ]  # fmt: skip
    notes = [
        f"Global rate: {params.rate_tasks} tasks per side to a healthy upstream, {NODES} nodes x "
        f"{CONCURRENCY} processes; rate = (calls - 1) / (last call - first call). "
        f"celery-resilience: {error:.1%} off the target over the whole run, "
        f"{r['middle_rate']:.2f}/s over the middle 80 % of the calls; calls per second "
        f"{r['per_second']}. Plain Celery's `rate_limit` holds per node: both nodes together "
        f"sent up to {int(p['worst'])} calls a second at first, then about one per node per "
        f"second (calls per second {_compact(p['per_second'])}), the slowdown of Celery's "
        "rate limit on the Redis transport reported in celery/celery#5927.",
    ]
    return Outcome("rate", rows, notes, figures)


def _compact(counts: list[int]) -> str:
    """``[22, 18, 2, 2, 2]`` as ``22, 18, 2 x 3``."""
    runs: list[tuple[int, int]] = []
    for count in counts:
        if runs and runs[-1][0] == count:
            runs[-1] = (count, runs[-1][1] + 1)
        else:
            runs.append((count, 1))
    return ", ".join(f"{c} x {n}" if n > 1 else str(c) for c, n in runs)
