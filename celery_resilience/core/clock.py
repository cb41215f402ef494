"""The one place where the local clock is read.

Shared state never uses it: breaker and limiter times come from the Redis server's
``TIME``. The local clock serves the per-process fallback store and durations in logs.
Tests move time by patching :func:`now` or :func:`monotonic` here.
"""

from __future__ import annotations

import time

__all__ = ["monotonic", "now"]


def now() -> float:
    """Wall-clock seconds since the epoch."""
    return time.time()


def monotonic() -> float:
    """Seconds from a clock that never goes back, for durations."""
    return time.monotonic()
