"""Breaker transitions in words, for log lines and reports.

::

    describe_transition(tr)  →  "half_open -> open (the probe failed; open again)"

The first part, ``old -> new``, stays greppable; the words in parentheses say what
happened: the failure rate that opened a breaker, a probe that failed or succeeded, an
operator's command.
"""

from __future__ import annotations

from celery_resilience.core.gates import BreakerState, Transition

__all__ = ["describe_transition", "transition_reason"]

_FORCED = (BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED)


def transition_reason(tr: Transition) -> str:
    """Why the breaker moved, in a few words."""
    old, new = tr.old, tr.new
    if new is BreakerState.FORCED_OPEN:
        return "forced open by an operator; stays open until reset"
    if new is BreakerState.FORCED_CLOSED:
        return "forced closed by an operator; stays closed, whatever fails, until reset"
    if old in _FORCED:
        return "reset by an operator"
    if new is BreakerState.HALF_OPEN:
        return "open time over; a probe may call"
    if old is BreakerState.HALF_OPEN and new is BreakerState.OPEN:
        return "the probe failed; open again"
    if old is BreakerState.HALF_OPEN and new is BreakerState.CLOSED:
        return "the probe succeeded"
    if new is BreakerState.OPEN:
        return f"failure rate {tr.failure_rate:.2f} over {tr.calls} calls"
    if new is BreakerState.CLOSED:
        return "reset"
    return ""


def describe_transition(tr: Transition) -> str:
    """``old -> new (why)``: one breaker transition for a log line."""
    reason = transition_reason(tr)
    moved = f"{tr.old.value} -> {tr.new.value}"
    return f"{moved} ({reason})" if reason else moved
