"""The dead letter of a task that failed for good: what an operator needs, no secrets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from celery_resilience.observability.logs import redact
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.deadletters import DeadLetter, capped_repr

if TYPE_CHECKING:
    from celery.app.task import Context

    from celery_resilience.core.classify import Failure
    from celery_resilience.core.ledger import AttemptState

__all__ = ["dead_letter"]

#: Arguments longer than this as JSON are kept as their (redacted) repr only.
_JSON_LIMIT = 65_536


def _json_or_none(value: object) -> str | None:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return None
    return text if len(text) <= _JSON_LIMIT else None


def dead_letter(
    *,
    task_name: str,
    request: Context,
    failure: Failure | None,
    reason: str,
    trace_id: str,
    state: AttemptState,
    now: float,
) -> DeadLetter:
    """The dead letter of the task ``request`` carries, failed for ``reason``."""
    delivery = request.delivery_info or {}
    return DeadLetter(
        task_name=task_name,
        task_id=safe_token(request.id),
        args=redact(capped_repr(request.args)),
        kwargs=redact(capped_repr(request.kwargs)),
        args_json=_json_or_none(request.args),
        kwargs_json=_json_or_none(request.kwargs),
        verdict=failure.verdict.value if failure is not None else "deadline",
        cause=failure.cause if failure is not None else reason,
        reason=reason,
        trace_id=trace_id,
        attempts=state.attempt,
        history=state.history,
        worker=safe_token(request.hostname or "?"),
        queue=delivery.get("routing_key"),
        failed_at=now,
        first_attempt_at=state.started,
    )
