"""Signals sent by resilient tasks (see :mod:`celery_resilience.observability.signals`)."""

from celery_resilience.observability.signals import (
    attempt_failed,
    attempt_started,
    attempt_succeeded,
    backend_fallback,
    breaker_state_changed,
    deferred,
    gave_up,
    retry_scheduled,
    send_transitions,
)

__all__ = [
    "attempt_failed",
    "attempt_started",
    "attempt_succeeded",
    "backend_fallback",
    "breaker_state_changed",
    "deferred",
    "gave_up",
    "retry_scheduled",
    "send_transitions",
]
