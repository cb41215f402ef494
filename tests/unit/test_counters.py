"""The node's counters: one row per process, summed by the main process."""

from __future__ import annotations

import os

import billiard
import pytest

from celery_resilience.observability.counters import FIELDS, PoolCounters

POOL_INDEX = 2


def _count_in_pool_process(table: PoolCounters) -> None:
    table.add("attempts", 5)
    table.add("succeeded", 4)


def _row(table: PoolCounters, row: int) -> dict[str, int]:
    cells = table._cells  # the rows themselves: what each process wrote
    return {name: cells[row * len(FIELDS) + i] for i, name in enumerate(FIELDS)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_pool_process_counts_in_its_own_row():
    """The main process counted first (its row found and kept); a pool process forked
    after it finds its own row, and the totals hold both."""
    table = PoolCounters(rows=8)
    table.add("attempts")
    child = billiard.get_context("fork").Process(target=_count_in_pool_process, args=(table,))
    child.index = POOL_INDEX  # as billiard's pool numbers its processes
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0

    assert _row(table, 0)["attempts"] == 1
    assert _row(table, 1 + POOL_INDEX)["attempts"] == 5
    assert _row(table, 1 + POOL_INDEX)["succeeded"] == 4
    totals = table.totals()
    assert (totals["attempts"], totals["succeeded"]) == (6, 4)


def test_fell_back_counts_and_notes_when():
    """An answer from the per-process fallback is counted, and when it came is kept."""
    table = PoolCounters(rows=2)
    table.fell_back()
    totals = table.totals()
    assert totals["fallbacks"] == 1
    assert totals["last_fallback_at"] is not None
