"""The sizes of a run: full (the published figures) or quick (for development)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Params"]


@dataclass(frozen=True)
class Params:
    """How big each scenario is."""

    outage_tasks: int = 200
    outage_seconds: float = 20.0
    rate_tasks: int = 200
    permanent_tasks: int = 50
    naive_window: float = 15.0
    ra_tasks: int = 40
    ra_seconds: int = 5
    ra_phase: float = 3.0
    overhead_tasks: int = 10_000
    overhead_reps: int = 3
    sweep_reps: int = 2
    waiting_rate_tasks: int = 200
    waiting_bulk_tasks: int = 10_000
    waiting_outage_tasks: int = 200
    waiting_ra_tasks: int = 20
    waiting_reps: int = 2
    waiting_bulk_reps: int = 1
    reliability_tasks: int = 40
    reliability_refused: int = 4
    degraded_rate: float = 50.0
    degraded_send_seconds: float = 20.0
    degraded_seconds: float = 25.0
    tenant_tasks: int = 80


FULL = Params()
QUICK = Params(
    outage_tasks=60,
    outage_seconds=8.0,
    rate_tasks=60,
    permanent_tasks=20,
    naive_window=6.0,
    ra_tasks=20,
    ra_seconds=3,
    ra_phase=2.0,
    overhead_tasks=3_000,
    overhead_reps=1,
    sweep_reps=1,
    waiting_rate_tasks=60,
    waiting_bulk_tasks=1_500,
    waiting_outage_tasks=60,
    waiting_ra_tasks=10,
    waiting_reps=1,
    waiting_bulk_reps=1,
    reliability_tasks=12,
    reliability_refused=2,
    degraded_rate=20.0,
    degraded_send_seconds=8.0,
    degraded_seconds=10.0,
    tenant_tasks=30,
)
