"""The message headers a resilient task reads and writes: every name, in one place."""

from __future__ import annotations

__all__ = ["BOOKED", "NONCE", "PARKED", "STATE", "TRACE"]

#: The W3C trace context of the task (``traceparent``).
TRACE = "traceparent"
#: The task's own counters and history (:class:`~celery_resilience.core.ledger.AttemptState`).
STATE = "resilience"
#: A random token given to each publication of a task (its redelivered copies keep it, a
#: new publication under the same task ID gets another): it keys the attempt leases.
NONCE = "resilience_nonce"
#: Set on a message published again from the parked set: the entry it came from.
PARKED = "resilience_parked"
#: A rate-limit slot reserved for the message when it reached a worker:
#: ``[limiter name, store time]`` as JSON. Dropped when the task is published again.
BOOKED = "resilience_booked"
