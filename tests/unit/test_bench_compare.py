"""The comparison of two revisions pairs each run with plain Celery's of its own session."""

from __future__ import annotations

import pytest

from benchmarks.compare import _summary


def _run(variant: str, session: int, rep: int, cpu_ms: float, rate: float) -> dict[str, object]:
    split = {"worker": cpu_ms / 2, "pool": cpu_ms / 2}
    return {"variant": variant, "session": session, "rep": rep, "cpu_ms": cpu_ms, "rate": rate,
            "split": split}  # fmt: skip


def test_each_run_is_compared_with_plain_of_its_session_and_repetition():
    runs = [
        _run("plain", 0, 0, 1.0, 1000.0),
        _run("resilient", 0, 0, 1.2, 900.0),
        _run("plain", 0, 1, 2.0, 500.0),
        _run("resilient", 0, 1, 2.2, 500.0),
        _run("plain", 1, 0, 1.0, 800.0),
        _run("resilient", 1, 0, 1.5, 400.0),
        _run("resilient", 2, 0, 9.0, 1.0),  # no plain run in its session: left out
        _run("plain", 3, 0, 1.0, 1000.0),
        _run("resilient", 3, 0, float("nan"), float("nan")),  # not measured: left out
    ]
    rows = _summary(runs)
    assert rows["resilient: CPU ratio"] == pytest.approx([1.2, 1.1, 1.5])
    assert rows["resilient: tasks/s ratio"] == pytest.approx([0.9, 1.0, 0.5])
    assert rows["plain: CPU ms per task"] == [1.0, 2.0, 1.0, 1.0]
    assert rows["resilient: pool ms"] == pytest.approx([0.6, 1.1, 0.75])
    assert "plain: CPU ratio" not in rows
    assert len(rows["resilient: runs left out"]) == 2
