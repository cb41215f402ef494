"""Instructions per task from two callgrind totals; the command refuses what it cannot run."""

from __future__ import annotations

import pytest

from benchmarks.instructions import _SUMMARY, LABELS, main, per_task
from benchmarks.overhead import VARIANTS


def test_per_task_is_the_difference_over_the_extra_tasks():
    assert per_task(2_000_000, 2_450_000, 1000) == 450.0
    assert per_task(10, 10, 5) == 0.0
    with pytest.raises(ValueError, match="tasks"):
        per_task(1, 2, 0)


def test_the_total_is_read_from_callgrind_s_summary_line():
    text = "version: 1\ncmd: python\nevents: Ir\nsummary: 2564871027\ntotals: 2564871027\n"
    match = _SUMMARY.search(text)
    assert match is not None
    assert int(match.group(1)) == 2564871027
    assert _SUMMARY.search("events: Ir\ntotals: 5\n") is None


@pytest.mark.parametrize(
    "argv", [["--variants", "plain,fast"], ["--variants", ","], ["--tasks", "0"]]
)
def test_bad_arguments_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_the_variants_are_the_overhead_scenario_s():
    assert tuple(label for label, _, _ in VARIANTS) == LABELS
