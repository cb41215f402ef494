"""Scenario 6, three tenants: one rate limit each, one of them with ten times the backlog.

Tenants ``a`` and ``b`` send ``tenant_tasks`` tasks each and ``c`` ten times as many,
interleaved as arrivals would be, to 2 nodes x 2 prefork processes per side, against a
healthy upstream. Plain Celery's closest tool is ``rate_limit="10/s"`` on the task, which
every worker node enforces on its own and for every tenant at once; celery-resilience's is
``RateLimit("tenant", "10/s", key=tenant)``, one limit per tenant across the cluster.
Measured at the upstream: each tenant's calls a second over a steady window (from 2 s
after the first call, until ``a`` and ``b`` would be done at 10/s), and when the last task
of ``a`` and ``b`` was done. ``c``'s remaining backlog is dropped once that is known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.params import Params
from benchmarks.rig import Rig

__all__ = ["TENANTS", "TenantsRun", "measure_tenants"]

#: The tenants and their backlog, in multiples of ``tenant_tasks``.
TENANTS = {"a": 1, "b": 1, "c": 10}
#: The rate each tenant may have.
RATE = 10.0
#: The steady window starts this long after the first call (the first deferrals are past).
_SETTLE = 2.0


@dataclass(frozen=True)
class TenantsRun:
    """One side's figures: each tenant's rate in the steady window, when a and b were done."""

    rates: dict[str, float]
    window: float
    small_done: float
    lost_small: int


def measure_tenants(rig: Rig, task: Any, *, prefix: str, queue: str, params: Params) -> TenantsRun:
    """Send every tenant's backlog at once, interleaved; measure until a and b are done."""
    counts = {t: n * params.tenant_tasks for t, n in TENANTS.items()}
    ids: dict[str, list[str]] = {t: [] for t in counts}
    began = time.time()
    with task.app.producer_or_acquire() as producer:
        for i in range(max(counts.values())):
            for tenant, count in counts.items():
                if i < count:
                    url = f"{rig.upstream.url}{prefix}/{tenant}/{i}"
                    args = (url, tenant) if task.name.endswith("tenant") else (url,)
                    sent = task.apply_async(args, queue=queue, producer=producer)
                    ids[tenant].append(sent.id)
    small = ids["a"] + ids["b"]
    states = rig.wait_done(small, timeout=10 * params.tenant_tasks / RATE + 60)
    records = rig.records(prefix)
    first = min(r.start for r in records)
    start = first + _SETTLE
    window = params.tenant_tasks / RATE - _SETTLE - 1.0
    rates = {
        t: sum(1 for r in records if r.path.startswith(f"{prefix}/{t}/")
               and start <= r.start < start + window) / window
        for t in counts
    }  # fmt: skip
    done = [r.start for r in records if r.path.split("/")[-2] in ("a", "b")]
    return TenantsRun(
        rates=rates,
        window=window,
        small_done=max(done) - began if done else float("nan"),
        lost_small=sum(1 for s in states.values() if s != "SUCCESS"),
    )
