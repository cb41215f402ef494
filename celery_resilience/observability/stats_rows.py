"""The worker's ``resilience`` stats as flat, named rows of text, for Flower's worker page.

Flower's *Other* tab shows each top-level key of ``inspect stats`` as one row, its value
printed with ``str()``: a nested section reads as one raw dict. These rows say the same
in words, one subject a row::

    flat_rows(section, now)  →  {
      "resilience: breaker 'billing'": "open, half-open in 4.9 s; failure rate 100% over 5 calls",
      "resilience: limiter 'crm'": "5/s; a call now waits 52.44 s; paused for 55.1 s more",
      "resilience: outcomes": "15 attempts: 0 succeeded, 7 failed, 7 retries, 8 deferrals, ...",
      ...}

Names (breakers, limiters) and error texts are escaped with :func:`safe_token` and
:func:`safe_text`, so a name with spaces, markup or control characters reads as escapes.
Pure: the section (as :class:`~celery_resilience.integration.bootstep.ResilienceStep`
builds it) and the state store's clock in, text out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from celery_resilience.observability.tracing import safe_text, safe_token
from celery_resilience.state.parked import PARK_REASONS

__all__ = ["PREFIX", "due_words", "flat_rows"]

#: What every row's name starts with, so that the rows sort and read together.
PREFIX = "resilience: "

_OUTCOMES = (
    ("attempts", "attempts"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("retries", "retries"),
    ("deferrals", "deferrals"),
    ("gave_up", "gave up"),
)
_STATE_WORDS = {
    "closed": "closed",
    "open": "open",
    "half_open": "half-open (probing)",
    "forced_open": "forced open (until `resilience breaker reset`)",
    "forced_closed": "forced closed (until `resilience breaker reset`)",
}


def _quoted(name: object) -> str:
    return f"'{safe_token(name)}'"


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"


def breaker_text(row: Mapping[str, Any]) -> str:
    """One breaker: its state, when it half-opens, its failure rate over how many calls."""
    state = str(row.get("state"))
    words = _STATE_WORDS.get(state, safe_token(state))
    half_open_in = row.get("half_open_in")
    if state == "open" and half_open_in is not None:
        words += f", half-open in {half_open_in:.1f} s"
    text = f"{words}; failure rate {row.get('failure_rate') or 0:.0%} over {row.get('calls')} calls"
    shed = row.get("shed") or 0
    if shed > 0:
        text += f"; shedding {shed:.0%} of calls"
    budget = row.get("retry_budget")
    if isinstance(budget, Mapping):
        allowed = budget.get("allowed")
        allowed = f"{allowed:g}" if isinstance(allowed, (int, float)) else "?"
        text += f"; retries {budget.get('retries')} of {allowed} allowed in the window"
    return text


def limiter_text(row: Mapping[str, Any], now: float | None) -> str:
    """One limiter: its rate, the wait a call meets now, a pause, the concurrency slots."""
    parts: list[str] = []
    if row.get("rate"):
        parts.append(safe_token(row["rate"]))
    wait = row.get("wait") or 0.0
    parts.append(f"a call now waits {wait:.2f} s" if wait > 0 else "no wait")
    paused = row.get("paused_until")
    if paused and now is not None and paused > now:
        parts.append(f"paused for {paused - now:.1f} s more")
    elif paused and now is None:
        parts.append(f"paused until {_utc(paused)}")
    else:
        parts.append("not paused")
    if row.get("concurrency") is not None:
        parts.append(f"{row.get('in_use')} of {row['concurrency']} concurrency slots in use")
    return "; ".join(parts)


def outcomes_text(counters: Mapping[str, Any]) -> str:
    """The node's counters: attempts, then each outcome."""
    rest = ", ".join(f"{counters.get(key, 0)} {words}" for key, words in _OUTCOMES[1:])
    return f"{counters.get('attempts', 0)} attempts: {rest}"


def fallback_text(fallback: Mapping[str, Any]) -> str:
    """Whether gates answer from per-process state, in which mode, how often they did."""
    head = "ACTIVE" if fallback.get("active") else "off"
    mode = safe_token(fallback.get("mode"))
    text = f"{head} (mode {mode}); {fallback.get('answers', 0)} gate answers from per-process state"
    last = fallback.get("last_at")
    return f"{text}, the last at {_utc(last)}" if last else text


def store_text(store: Mapping[str, Any]) -> str:
    """Where the state store is and whether it answers."""
    where = safe_text(store.get("address"))
    if store.get("reachable"):
        return f"{where}, reachable"
    return f"{where}, UNREACHABLE ({safe_text(store.get('error'), 200)})"


def due_words(due_in: float | None) -> str:
    """When the oldest parked task is due: ``next due in 4.6 s``, ``oldest overdue by ...``."""
    if due_in is None:
        return "none waiting"
    if due_in >= 0:
        return f"next due in {due_in:.1f} s"
    return f"oldest overdue by {-due_in:.1f} s"


def parked_text(parked: Mapping[str, Any]) -> str:
    """The parked set: how many by reason, claimed, the next due, where it lives."""
    if "count" not in parked:
        return f"unknown ({safe_text(parked.get('error'), 200)})"
    reasons = ", ".join(f"{r} {parked[r]}" for r in PARK_REASONS if parked.get(r))
    due = due_words(parked.get("oldest_due_in"))
    durable = "durable" if parked.get("durable") else "not durable"
    where = safe_text(parked.get("store"))
    count = f"{parked['count']}{f' ({reasons})' if reasons else ''}"
    return f"{count}, {parked.get('claimed', 0)} claimed, {due}; in {where} ({durable})"


def releaser_text(parked: Mapping[str, Any]) -> str:
    """This node's releaser: running or off, what it published, its errors."""
    state = str(parked.get("releaser", "off"))
    if "published" not in parked:
        return safe_token(state)
    text = (
        f"{safe_token(state)}: published {parked['published']}, republished "
        f"{parked.get('republished', 0)}; {parked.get('publish_errors', 0)} publish errors, "
        f"{parked.get('store_errors', 0)} store errors"
    )
    last = parked.get("last_error")
    return f"{text}; last error: {safe_text(last, 200)}" if last else text


def flat_rows(section: Mapping[str, Any], now: float | None = None) -> dict[str, str]:
    """The section as ``{"resilience: <subject>": "<words>"}``, breakers and limiters first.

    ``now`` is the state store's clock when the section was read (limiter pauses are
    times on that clock); without it a pause reads as a UTC time.
    """
    rows: dict[str, str] = {}
    for name, row in section.get("breakers", {}).items():
        rows[f"{PREFIX}breaker {_quoted(name)}"] = breaker_text(row)
    for name, row in section.get("limiters", {}).items():
        rows[f"{PREFIX}limiter {_quoted(name)}"] = limiter_text(row, now)
    rows[f"{PREFIX}outcomes"] = outcomes_text(section.get("counters", {}))
    parked = section.get("parked")
    if parked is not None:
        rows[f"{PREFIX}parked"] = parked_text(parked)
        rows[f"{PREFIX}releaser"] = releaser_text(parked)
    rows[f"{PREFIX}fallback"] = fallback_text(section.get("fallback", {}))
    rows[f"{PREFIX}store"] = store_text(section.get("store", {}))
    return rows
