"""Figures computed from the upstream's request records (pure functions).

Times are the upstream's wall-clock seconds (``RequestRecord.start`` and ``.end``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from example_project.upstream import RequestRecord

__all__ = [
    "busiest_window",
    "by_path",
    "early_calls",
    "effects",
    "per_second",
    "percentile",
    "steady_rate",
    "success_times",
]


def busiest_window(times: Iterable[float], width: float) -> int:
    """The most ``times`` that fall in any half-open window ``[t, t + width)``."""
    ordered = sorted(times)
    best = 0
    left = 0
    for right, t in enumerate(ordered):
        while ordered[left] <= t - width:
            left += 1
        best = max(best, right - left + 1)
    return best


def per_second(times: Sequence[float]) -> list[int]:
    """Calls in each whole second from the first call on."""
    if not times:
        return []
    start = min(times)
    counts = [0] * (int(max(times) - start) + 1)
    for t in times:
        counts[int(t - start)] += 1
    return counts


def steady_rate(times: Iterable[float]) -> float:
    """Calls per second between the first and the last call: ``(n - 1) / span``."""
    ordered = sorted(times)
    if len(ordered) < 2 or ordered[-1] == ordered[0]:
        return float("nan")
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def by_path(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Records grouped by request path (one path per task), each group in arrival order."""
    groups: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.start):
        groups[record.path].append(record)
    return dict(groups)


def success_times(records: Iterable[RequestRecord]) -> dict[str, float]:
    """For each path, when its first 2xx answer was sent."""
    done: dict[str, float] = {}
    for path, group in by_path(records).items():
        for record in group:
            if record.status is not None and 200 <= record.status < 300:
                done[path] = record.end
                break
    return done


def early_calls(records: Iterable[RequestRecord], retry_after: float) -> int:
    """Calls a task made before the ``Retry-After`` of a 429 it was given had elapsed.

    A call to a path is early when it started before ``t + retry_after`` for some earlier
    429 answered to that path at ``t``; each call counts once.
    """
    early = 0
    for group in by_path(records).values():
        not_before = float("-inf")
        for record in group:
            if record.start < not_before:
                early += 1
            if record.status == 429:
                not_before = max(not_before, record.end + retry_after)
    return early


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0..1) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    if share == 0.5:
        return float(statistics.median(values))
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def effects(records: Iterable[RequestRecord]) -> dict[str, tuple[int, int]]:
    """For each path: (effects applied, raw calls) of the POSTs answered 2xx.

    An upstream that honours ``Idempotency-Key`` applies a POST once per key: every call
    under one key counts one effect; a call without a key is an effect of its own. A call
    answered (or about to be answered) 2xx counts even if its client died waiting.
    """
    keys: dict[str, set[str]] = defaultdict(set)
    raw: dict[str, int] = defaultdict(int)
    for record in records:
        if record.method != "POST" or record.status is None or not 200 <= record.status < 300:
            continue
        raw[record.path] += 1
        key = record.header("Idempotency-Key")
        keys[record.path].add(key if key is not None else f"no key, call {raw[record.path]}")
    return {path: (len(keys[path]), count) for path, count in raw.items()}
