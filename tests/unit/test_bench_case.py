"""One degraded case run alone: its verdict per run and its tenths, from plain values."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.case import _Tenths
from benchmarks.degraded import CASES, DegradedRun, targets_met

OVERLOAD = next(c for c in CASES if c.key == "overload")
RUN = DegradedRun(
    tasks=1000, calls=1250, degraded_for=25.0, done_during=690, ok_during=690,
    calls_during=950, last_done=33.0, last_after_heal=8.0, succeeded=1000, failed=0,
    unfinished=0,
)  # fmt: skip


def test_a_run_meets_the_overload_case_only_within_every_target():
    assert targets_met(OVERLOAD, RUN)
    assert not targets_met(OVERLOAD, replace(RUN, calls=1310))  # 1.31 calls per task
    assert not targets_met(OVERLOAD, replace(RUN, ok_during=670))  # 26.8/s
    assert not targets_met(OVERLOAD, replace(RUN, succeeded=999, unfinished=1))  # one lost


def test_each_tenth_is_told_with_its_parity_sends_accepts_and_sheds():
    tenths = _Tenths(None, "window", 10.0)  # type: ignore[arg-type]
    tenths.seen = {"1000:s": 30, "1000:f": 15, "1000:x": 4, "2000:s": 20, "2000:q": 20}
    first, second = tenths.lines()
    assert first.split() == ["0.0", "s", "odd", "sent", "45", "accepted", "30", "failed", "15",
                             "shed", "4", "sent/accepted", "1.50"]  # fmt: skip
    assert second.split()[:5] == ["1.0", "s", "even", "sent", "20"]
    assert _Tenths(None, "window", 10.0).lines() == ["  (no breaker window seen)"]  # type: ignore[arg-type]
