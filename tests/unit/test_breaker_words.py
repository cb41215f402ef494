"""Breaker transitions in words: what a log line says happened."""

from __future__ import annotations

import pytest

from celery_resilience.core.gates import BreakerState, Transition
from celery_resilience.observability.breakers import describe_transition

S = BreakerState


@pytest.mark.parametrize(
    ("old", "new", "rate", "calls", "line"),
    [
        (S.CLOSED, S.OPEN, 0.5, 26, "closed -> open (failure rate 0.50 over 26 calls)"),
        (S.OPEN, S.HALF_OPEN, 0.0, 0, "open -> half_open (open time over; a probe may call)"),
        (S.HALF_OPEN, S.OPEN, 0.0, 0, "half_open -> open (the probe failed; open again)"),
        (S.HALF_OPEN, S.CLOSED, 0.0, 0, "half_open -> closed (the probe succeeded)"),
        (
            S.CLOSED,
            S.FORCED_OPEN,
            0.0,
            0,
            "closed -> forced_open (forced open by an operator; stays open until reset)",
        ),
        (
            S.OPEN,
            S.FORCED_CLOSED,
            0.0,
            0,
            "open -> forced_closed (forced closed by an operator; stays closed, whatever "
            "fails, until reset)",
        ),
        (S.FORCED_OPEN, S.CLOSED, 0.0, 0, "forced_open -> closed (reset by an operator)"),
        (S.OPEN, S.CLOSED, 0.0, 0, "open -> closed (reset)"),
    ],
)
def test_each_transition_says_what_happened(old, new, rate, calls, line):
    """A failed probe is named as such, never as 'failure rate 0.00 over 0 calls'."""
    assert describe_transition(Transition("pay", old, new, rate, calls)) == line
