"""Counters of one worker node, summed over its pool processes, for ``inspect stats``.

Attempts run in pool processes, but ``inspect stats`` is answered by the worker's main
process. So the counters live in an anonymous shared memory block that the main process
maps before the pool forks; every process adds to its own row (one writer per row: no
lock between processes), and the main process sums the rows. The attempt's flow counts
through :func:`count`, a direct call: one per event, where a signal's dispatch would cost
more than the task's own bookkeeping.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import Any

from billiard.process import current_process

from celery_resilience.core import clock

__all__ = ["FIELDS", "PoolCounters", "count", "fell_back", "install", "installed"]

#: What is counted, in the pool processes of this node since it started.
FIELDS = (
    "attempts",
    "succeeded",
    "failed",
    "retries",
    "deferrals",
    "gave_up",
    "fallbacks",
    "last_fallback_us",
)
_ROWS = 256
_WIDTH = len(FIELDS)
_INDEX = {name: i for i, name in enumerate(FIELDS)}


class PoolCounters:
    """A table of 64-bit counters in shared memory: one row per pool process."""

    def __init__(self, rows: int = _ROWS) -> None:
        self.rows = rows
        self._memory = mmap.mmap(-1, rows * _WIDTH * 8)
        self._cells = memoryview(self._memory).cast("q")
        self._lock = threading.Lock()
        #: This process's row, found on its first count; forgotten in a forked child.
        self._own: int | None = None
        if hasattr(os, "register_at_fork"):  # no fork, no hook (Windows)
            table = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forget_parent(table))

    def _row(self) -> int:
        row = self._own
        if row is None:
            index = getattr(current_process(), "index", None)
            # the main process (solo and thread pools) counts in row 0
            row = self._own = 1 + index % (self.rows - 1) if isinstance(index, int) else 0
        return row

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` of this process."""
        cell = self._row() * _WIDTH + _INDEX[name]
        with self._lock:
            self._cells[cell] += amount

    def fell_back(self) -> None:
        """Count one answer from the per-process fallback, and note when."""
        self.add("fallbacks")
        cell = self._row() * _WIDTH + _INDEX["last_fallback_us"]
        with self._lock:
            self._cells[cell] = int(clock.now() * 1_000_000)

    def totals(self) -> dict[str, Any]:
        """The counters summed over every process; ``last_fallback_at`` in epoch seconds."""
        sums = dict.fromkeys(FIELDS, 0)
        last = 0
        for row in range(self.rows):
            base = row * _WIDTH
            for name, i in _INDEX.items():
                value = self._cells[base + i]
                if name == "last_fallback_us":
                    last = max(last, value)
                else:
                    sums[name] += value
        del sums["last_fallback_us"]
        out: dict[str, Any] = sums
        out["last_fallback_at"] = last / 1_000_000 if last else None
        return out


def _forget_parent(table: weakref.ref[PoolCounters]) -> None:
    """In a forked child: the row is found again (a pool process has its own), and the
    lock is new (a parent's thread may have held it at the fork)."""
    counters = table()
    if counters is not None:
        counters._own = None
        counters._lock = threading.Lock()


_installed: PoolCounters | None = None


def installed() -> PoolCounters | None:
    """The counters of this node, once :func:`install` ran (in the main process)."""
    return _installed


def count(name: str) -> None:
    """Add one to counter ``name`` of this process (nothing before :func:`install`)."""
    table = _installed
    if table is not None:
        table.add(name)


def fell_back() -> None:
    """Count one answer from the per-process fallback (nothing before :func:`install`)."""
    table = _installed
    if table is not None:
        table.fell_back()


def install() -> PoolCounters:
    """Map the counters (idempotent). Call before the fork."""
    global _installed  # noqa: PLW0603 - one table per worker node
    if _installed is None:
        _installed = PoolCounters()
    return _installed
