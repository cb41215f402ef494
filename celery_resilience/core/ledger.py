"""The attempt ledger: counters carried from attempt to attempt, and the lines that say why.

A task's own counters travel in one message header (``resilience``, a short JSON string),
because Celery's ``request.retries`` counts every re-publish, deferrals included. The
header is input from the outside world: it is size-capped and checked field by field,
and anything malformed is replaced by a fresh state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import TypeGuard

from celery_resilience.core import headers

__all__ = [
    "HEADER",
    "HISTORY_LIMIT",
    "AttemptState",
    "deferral_line",
    "gave_up_message",
    "retry_line",
]

#: The message header holding :class:`AttemptState`.
HEADER = headers.STATE
#: Past attempts kept in the header (the oldest are dropped, and counted).
HISTORY_LIMIT = 20
_ENTRY_LIMIT = 240
_HEADER_LIMIT = 16_384


@dataclass(frozen=True, slots=True)
class AttemptState:
    """What one attempt knows of the task's earlier attempts.

    ``failures`` are retries already spent (they count against ``max_retries``);
    ``deferrals`` never do. ``started`` is the store's clock at the first attempt (the
    ``deadline`` counts from it); ``not_before`` holds back an attempt woken before the end
    of a wait that was split (see the broker's visibility timeout); ``slot`` is a rate-limit
    slot booked for this task: ``(limiter name, store time)``.
    """

    failures: int = 0
    deferrals: int = 0
    started: float | None = None
    not_before: float | None = None
    slot: tuple[str, float] | None = None
    history: tuple[str, ...] = ()
    dropped: int = 0

    @property
    def attempt(self) -> int:
        """The number of this attempt at the task body, from 1."""
        return self.failures + 1

    def admitted(self, started: float) -> AttemptState:
        """This state once the gates let the attempt in: its task's clock ``started``,
        its booked slot (if any) used up. (As ``replace``, for a fraction of its cost.)"""
        return AttemptState(
            failures=self.failures,
            deferrals=self.deferrals,
            started=started,
            not_before=self.not_before,
            slot=None,
            history=self.history,
            dropped=self.dropped,
        )

    def to_header(self) -> str:
        """Serialise for the message header."""
        data: dict[str, object] = {"v": 1, "f": self.failures, "d": self.deferrals}
        if self.started is not None:
            data["t0"] = self.started
        if self.not_before is not None:
            data["nb"] = self.not_before
        if self.slot is not None:
            data["slot"] = [self.slot[0], self.slot[1]]
        if self.history:
            data["h"] = list(self.history)
        if self.dropped:
            data["hx"] = self.dropped
        return json.dumps(data, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_header(cls, raw: object) -> AttemptState | None:
        """Parse the header; None when it is absent, oversized or malformed."""
        if not isinstance(raw, str) or len(raw) > _HEADER_LIMIT:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        failures, deferrals = data.get("f"), data.get("d")
        if not _is_count(failures) or not _is_count(deferrals):
            return None
        started, not_before = data.get("t0"), data.get("nb")
        if (started is not None and not _is_time(started)) or (
            not_before is not None and not _is_time(not_before)
        ):
            return None
        raw_slot = data.get("slot")
        slot = _parse_slot(raw_slot)
        if raw_slot is not None and slot is None:
            return None
        history = data.get("h", [])
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            return None
        dropped = data.get("hx", 0)
        if not _is_count(dropped):
            return None
        return cls(
            failures=failures,
            deferrals=deferrals,
            started=started,
            not_before=not_before,
            slot=slot,
            history=tuple(_clip(h) for h in history[-HISTORY_LIMIT:]),
            dropped=dropped + max(len(history) - HISTORY_LIMIT, 0),
        )

    def with_entry(self, entry: str) -> AttemptState:
        """This state with one more history line (the oldest dropped beyond the limit)."""
        history = (*self.history, _clip(entry))
        dropped = self.dropped
        if len(history) > HISTORY_LIMIT:
            dropped += len(history) - HISTORY_LIMIT
            history = history[-HISTORY_LIMIT:]
        return replace(self, history=history, dropped=dropped)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000


def _is_time(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < 1e11
    )


def _parse_slot(raw: object) -> tuple[str, float] | None:
    if (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], str)
        and 0 < len(raw[0]) <= 200
        and _is_time(raw[1])
    ):
        return (raw[0], float(raw[1]))
    return None


def _clip(text: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= _ENTRY_LIMIT else text[: _ENTRY_LIMIT - 1] + "…"


def _of(attempt: int, max_retries: int | None) -> str:
    if max_retries is None:
        return f"attempt {attempt}"
    return f"attempt {attempt} of {max_retries + 1}"


def retry_line(
    *,
    verdict: str,
    cause: str,
    attempt: int,
    max_retries: int | None,
    countdown: float,
    trace_id: str,
) -> str:
    """The ledger line of a failed attempt that will be retried, e.g.::

    transient: HTTP 503 from api.example.com; attempt 2 of 9; retry in 3.4 s; trace 4bf9…
    """
    return (
        f"{verdict}: {cause}; {_of(attempt, max_retries)}; retry in {countdown:.1f} s; "
        f"trace {trace_id}"
    )


def deferral_line(
    *, why: str, attempt: int, max_retries: int | None, countdown: float, trace_id: str
) -> str:
    """The ledger line of an attempt deferred by a gate (it does not spend a retry), e.g.::

    deferred: breaker 'payments' open, half-open in 8.1 s; attempt 1 of 9; retry in 9.3 s; …
    """
    return (
        f"deferred: {why}; {_of(attempt, max_retries)}; retry in {countdown:.1f} s; "
        f"trace {trace_id}"
    )


def gave_up_message(*, reason: str, state: AttemptState, trace_id: str) -> str:
    """The message of the final failure: why, then the attempt history, one line each."""
    lines = [f"gave up after {state.attempt} attempt(s): {reason}; trace {trace_id}"]
    if state.dropped:
        lines.append(f"  ({state.dropped} earlier entries dropped)")
    lines.extend(f"  {entry}" for entry in state.history)
    return "\n".join(lines)
