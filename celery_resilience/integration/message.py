"""What a task's message carries for the attempt engine: its ledger, trace and token.

Every value read here comes from the outside world: a malformed header is replaced by a
fresh value and noted once per process, never trusted.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery_resilience.core import headers as names
from celery_resilience.core.ledger import AttemptState
from celery_resilience.observability.tracing import (
    TraceContext,
    current_attempt,
    new_trace,
    parse_traceparent,
)

if TYPE_CHECKING:
    from celery.app.task import Context

__all__ = [
    "booking_header",
    "incoming_state",
    "incoming_trace",
    "new_nonce",
    "nonce_of",
    "trace_for_publish",
]

_internal = logging.getLogger("celery_resilience.integration.message")
_NONCE_RE = re.compile(r"^[0-9a-f]{8,32}$")
_BOOKING_LIMIT = 512
#: The ledger of a message that carries none: its first attempt (frozen, so shared).
_FRESH = AttemptState()
_noted: set[str] = set()


def _note_once(key: str, message: str, *args: object) -> None:
    if key not in _noted:
        _noted.add(key)
        _internal.warning(message, *args)


def new_nonce() -> str:
    """A fresh publication token."""
    return secrets.token_hex(8)


def nonce_of(request: Context) -> str:
    """The publication token of this message ("-" when its publisher set none)."""
    value = (request.headers or {}).get(names.NONCE)
    return value if isinstance(value, str) and _NONCE_RE.match(value) else "-"


def trace_for_publish() -> TraceContext:
    """The trace a task published now continues: the current attempt's, OTel's, or new."""
    attempt = current_attempt()
    if attempt is not None:
        return attempt.trace_context().child()
    from celery_resilience.observability.otel import otel_parent  # noqa: PLC0415 - optional

    parent = otel_parent()
    return parent.child() if parent is not None else new_trace()


def incoming_trace(headers: dict[str, Any]) -> TraceContext:
    """The trace context the message carries, or a fresh one."""
    raw = headers.get(names.TRACE)
    parsed = parse_traceparent(raw)
    if parsed is not None:
        return parsed
    if raw is not None:
        _note_once(
            "traceparent",
            "celery-resilience: a malformed %s header was replaced by a fresh trace "
            "(noted once per process)",
            names.TRACE,
        )
    return trace_for_publish()


def incoming_state(headers: dict[str, Any]) -> AttemptState:
    """The ledger the message carries, or a fresh one; with the rate-limit slot reserved
    for it on arrival, if any (see :func:`booking_header`)."""
    raw = headers.get(names.STATE)
    state = AttemptState.from_header(raw)
    if state is None:
        if raw is not None:
            _note_once(
                "state",
                "celery-resilience: a malformed %s header was ignored; the task starts its "
                "count afresh (noted once per process)",
                names.STATE,
            )
        state = _FRESH
    booked = _booking(headers.get(names.BOOKED))
    if booked is not None and state.slot is None:
        state = replace(state, slot=booked)
    return state


def booking_header(limiter: str, slot: float) -> str:
    """The header value of a rate-limit slot reserved for a message on arrival."""
    return json.dumps([limiter, slot])


def _booking(raw: object) -> tuple[str, float] | None:
    if not isinstance(raw, str) or len(raw) > _BOOKING_LIMIT:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
        and math.isfinite(value[1])
    ):
        return (value[0], float(value[1]))
    return None
