"""Shared state for breakers, limiters and attempt leases: Redis, with a local fallback."""

from celery_resilience.state.base import (
    BreakerState,
    BreakerStatus,
    Denial,
    GateAnswer,
    GateAsk,
    LimiterStatus,
    OutcomeReport,
    RecordAnswer,
    StateStore,
    Transition,
)

__all__ = [
    "BreakerState",
    "BreakerStatus",
    "Denial",
    "GateAnswer",
    "GateAsk",
    "LimiterStatus",
    "OutcomeReport",
    "RecordAnswer",
    "StateStore",
    "Transition",
]
