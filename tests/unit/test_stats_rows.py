"""The worker's ``resilience`` stats as flat rows of text: what Flower's worker page shows."""

from __future__ import annotations

from typing import Any

from celery_resilience.observability.stats_rows import flat_rows

NOW = 1_795_674_371.0


def _section(**changes: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "breakers": {
            "billing": {"state": "open", "failure_rate": 1.0, "calls": 5,
                        "open_until": NOW + 4.9, "half_open_in": 4.9},
            "crm": {"state": "closed", "failure_rate": 0.0, "calls": 0,
                    "open_until": None, "half_open_in": None},
        },
        "limiters": {
            "crm": {"rate": "5/s", "wait": 52.44, "in_use": 0, "concurrency": None,
                    "paused_until": NOW + 55.1},
            "api": {"rate": None, "wait": 0.0, "in_use": 2, "concurrency": 3,
                    "paused_until": None},
        },
        "store": {"address": "127.0.0.1:6379/2", "reachable": True, "error": None},
        "fallback": {"active": False, "mode": "allow", "answers": 0, "last_at": None},
        "counters": {"attempts": 15, "succeeded": 0, "failed": 7, "retries": 7,
                     "deferrals": 8, "gave_up": 0},
        "parked": {"releaser": "running", "store": "127.0.0.1:6379/0", "durable": True,
                   "count": 40, "claimed": 1, "oldest_due_in": 12.5, "rate_limited": 0,
                   "breaker_open": 38, "backoff": 2, "retry_after": 0, "concurrency": 0,
                   "schedule": 0, "published": 118, "republished": 0, "publish_errors": 0,
                   "store_errors": 0, "last_error": None},
    }  # fmt: skip
    section.update(changes)
    return section


def test_each_subject_is_one_named_row_of_words():
    """Breakers, limiters, outcomes, parked set, releaser, fallback and store: one row each."""
    assert flat_rows(_section(), NOW) == {
        "resilience: breaker 'billing'": "open, half-open in 4.9 s; failure rate 100% over 5 calls",
        "resilience: breaker 'crm'": "closed; failure rate 0% over 0 calls",
        "resilience: limiter 'crm'": "5/s; a call now waits 52.44 s; paused for 55.1 s more",
        "resilience: limiter 'api'": "no wait; not paused; 2 of 3 concurrency slots in use",
        "resilience: outcomes": (
            "15 attempts: 0 succeeded, 7 failed, 7 retries, 8 deferrals, 0 gave up"
        ),
        "resilience: parked": (
            "40 (breaker_open 38, backoff 2), 1 claimed, next due in 12.5 s; "
            "in 127.0.0.1:6379/0 (durable)"
        ),
        "resilience: releaser": (
            "running: published 118, republished 0; 0 publish errors, 0 store errors"
        ),
        "resilience: fallback": "off (mode allow); 0 gate answers from per-process state",
        "resilience: store": "127.0.0.1:6379/2, reachable",
    }


def test_forced_and_half_open_breakers_say_so():
    """An operator's pin names the command that lifts it; half-open says it probes."""
    breakers = {
        "a": {"state": "forced_open", "failure_rate": 0.0, "calls": 0},
        "b": {"state": "half_open", "failure_rate": 0.5, "calls": 4},
    }
    rows = flat_rows(_section(breakers=breakers), NOW)
    assert rows["resilience: breaker 'a'"] == (
        "forced open (until `resilience breaker reset`); failure rate 0% over 0 calls"
    )
    assert rows["resilience: breaker 'b'"] == "half-open (probing); failure rate 50% over 4 calls"


def test_a_breaker_says_what_it_sheds_and_how_much_retry_budget_it_spent():
    breakers = {
        "a": {
            "state": "closed",
            "failure_rate": 0.4,
            "calls": 50,
            "shed": 0.25,
            "retry_budget": {"retries": 7, "allowed": 10.0},
        },
    }
    rows = flat_rows(_section(breakers=breakers), NOW)
    assert rows["resilience: breaker 'a'"] == (
        "closed; failure rate 40% over 50 calls; shedding 25% of calls; "
        "retries 7 of 10 allowed in the window"
    )


def test_a_down_store_and_an_active_fallback_stand_out():
    """Unreachable store and active fallback are in capitals, with the error and last time."""
    rows = flat_rows(
        _section(
            breakers={},
            limiters={},
            store={"address": "10.0.0.5:6379/2", "reachable": False,
                   "error": "ConnectionError: Error 111 connecting"},
            fallback={"active": True, "mode": "defer", "answers": 3, "last_at": 1795674000.0},
            parked={"releaser": "off", "error": "the state store did not answer"},
        )
    )  # fmt: skip
    assert rows["resilience: store"] == (
        "10.0.0.5:6379/2, UNREACHABLE (ConnectionError: Error 111 connecting)"
    )
    assert rows["resilience: fallback"] == (
        "ACTIVE (mode defer); 3 gate answers from per-process state, "
        "the last at 2026-11-26 06:20:00Z"
    )
    assert rows["resilience: parked"] == "unknown (the state store did not answer)"
    assert rows["resilience: releaser"] == "off"
    assert not any("breaker" in name or "limiter" in name for name in rows)


def test_names_are_escaped():
    """A policy name with spaces, markup or non-ASCII reads as escapes, in names and values."""
    odd = "legacy café <b>\u202e"
    row = {"state": "closed", "failure_rate": 0.0, "calls": 0}
    rows = flat_rows(_section(breakers={odd: row}, limiters={}), NOW)
    assert "resilience: breaker 'legacy\\x20caf\\xe9\\x20<b>\\u202e'" in rows
    assert all(name.isascii() and " <b> " not in name for name in rows)


def test_a_pause_without_the_store_clock_reads_as_a_utc_time():
    """No store clock known: the pause is shown as when it ends, not as a guess of how long."""
    limiters = {"crm": {"rate": "5/s", "wait": 0.0, "in_use": 0, "concurrency": None,
                        "paused_until": 1795674000.0}}  # fmt: skip
    rows = flat_rows(_section(breakers={}, limiters=limiters), None)
    assert rows["resilience: limiter 'crm'"] == ("5/s; no wait; paused until 2026-11-26 06:20:00Z")
