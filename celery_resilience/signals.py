"""Signals sent by resilient tasks, for metrics, alerts and tests.

Connect like any Celery signal:

```python
from celery_resilience import signals

@signals.gave_up.connect
def page_someone(sender, task_id, reason, **kwargs):
    ...
```

``sender`` is the task (``breaker_state_changed``: the breaker's name). Every signal is
sent in the worker process that made the decision; receivers must be quick and must not
raise (an exception in a receiver is logged by Celery and otherwise ignored).

- ``attempt_started``: ``task_id``, ``attempt`` (from 1), ``trace_id``, ``span_id``.
- ``attempt_succeeded``: ``task_id``, ``attempt``, ``duration`` (seconds).
- ``attempt_failed``: ``task_id``, ``attempt``, ``verdict`` (a ``Verdict``), ``cause`` (one
  log-safe line), ``exc``, ``duration`` (seconds).
- ``retry_scheduled``: ``task_id``, ``attempt`` (the one that failed), ``countdown``,
  ``verdict``, ``cause``, ``reason`` (the ledger line).
- ``deferred``: ``task_id``, ``attempt``, ``gate`` (``"breaker"``, ``"retry_budget"``,
  ``"rate_limit"``, ``"concurrency"``, ``"attempt"``, ``"backend"``, ``"schedule"``),
  ``name`` (the policy's name, or ``None``), ``countdown``, ``reason`` (the ledger line).
- ``gave_up``: ``task_id``, ``attempt``, ``reason`` (why, in words), ``exc`` (the last
  failure), ``history`` (the ledger lines, oldest first).
- ``breaker_state_changed``: ``name``, ``old``, ``new`` (a ``BreakerState``),
  ``failure_rate``, ``calls`` (outcomes in the window), ``key`` (a keyed breaker's key,
  escaped; ``"~overflow"`` for its name's overflow state; ``None`` for an unkeyed one).
- ``backend_fallback``: ``mode`` (``"allow"`` or ``"defer"``): an attempt was answered by
  the per-process fallback because Redis could not be reached (``sender``: the runtime's
  description of the store).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from celery.utils.dispatch import Signal

if TYPE_CHECKING:
    from celery_resilience.core.gates import Transition

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

attempt_started = Signal(
    name="attempt_started", providing_args=["task_id", "attempt", "trace_id", "span_id"]
)
attempt_succeeded = Signal(
    name="attempt_succeeded", providing_args=["task_id", "attempt", "duration"]
)
attempt_failed = Signal(
    name="attempt_failed",
    providing_args=["task_id", "attempt", "verdict", "cause", "exc", "duration"],
)
retry_scheduled = Signal(
    name="retry_scheduled",
    providing_args=["task_id", "attempt", "countdown", "verdict", "cause", "reason"],
)
deferred = Signal(
    name="deferred",
    providing_args=["task_id", "attempt", "gate", "name", "countdown", "reason"],
)
gave_up = Signal(name="gave_up", providing_args=["task_id", "attempt", "reason", "exc", "history"])
breaker_state_changed = Signal(
    name="breaker_state_changed",
    providing_args=["name", "old", "new", "failure_rate", "calls", "key"],
)
backend_fallback = Signal(name="backend_fallback", providing_args=["mode"])


def send_transitions(transitions: Iterable[Transition]) -> None:
    """Send ``breaker_state_changed`` for each transition this process caused."""
    for tr in transitions:
        breaker_state_changed.send(
            sender=tr.name,
            name=tr.name,
            old=tr.old,
            new=tr.new,
            failure_rate=tr.failure_rate,
            calls=tr.calls,
            key=tr.key,
        )
