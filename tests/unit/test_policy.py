"""Policies are frozen values, checked when built; a bad value names its field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from celery_resilience import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core.limits import parse_rate


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": -0.1}, "failure_rate"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 0}, "window"),
        ({"window": -1.0}, "window"),
        ({"open_for": 0}, "open_for"),
        ({"open_for": math.inf}, "open_for"),
        ({"open_for": 10, "open_for_max": 5}, "open_for_max"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"probe_lease": -2}, "probe_lease"),
    ],
)
def test_breaker_rejects_bad_values(kwargs, field):
    """Out-of-range values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        CircuitBreaker("p", **kwargs)


def test_breaker_rejects_bad_types_and_names():
    """Wrong types raise TypeError; an empty or control-character name is refused."""
    with pytest.raises(TypeError, match="minimum_calls"):
        CircuitBreaker("p", minimum_calls=2.5)
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")
    with pytest.raises(ValueError, match="control"):
        CircuitBreaker("a\nb")


def test_breaker_is_frozen_and_compares_by_value():
    """Policies are immutable values."""
    breaker = CircuitBreaker("p", open_for=2.0)
    assert breaker == CircuitBreaker("p", open_for=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        breaker.open_for = 3.0  # type: ignore[misc]
    assert breaker.max_open_for == 2.0
    assert breaker.lease == 2.0
    assert CircuitBreaker("p", open_for=2.0, open_for_max=60).max_open_for == 60


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("50/s", (50.0, 1.0)),
        ("600/m", (600.0, 60.0)),
        ("1000/h", (1000.0, 3600.0)),
        ("0.5/s", (0.5, 1.0)),
        ("10", (10.0, 1.0)),
        (" 5 / min ", (5.0, 60.0)),
    ],
)
def test_rates_parse_as_celery_writes_them(rate, expected):
    """Rates read like Celery's rate_limit."""
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["10/x", "0/s", "-1/s", "", "ten/s", "5/s/s", 10, None, b"5/s"])
def test_bad_rates_are_refused(rate):
    """A bad rate is a ValueError naming the option."""
    with pytest.raises(ValueError, match="rate"):
        RateLimit("api", rate)


@pytest.mark.parametrize("burst", [0, -1, 2.5, True, "3"])
def test_bad_bursts_are_refused(burst):
    """burst is an int >= 1 (or None)."""
    with pytest.raises(ValueError, match="burst"):
        RateLimit("api", "5/s", burst=burst)


def test_rate_limit_derived_values():
    """interval is period/count; capacity is burst, 1 by default."""
    limit = RateLimit("api", "600/m")
    assert limit.interval == pytest.approx(0.1)
    assert limit.capacity == 1
    assert RateLimit("api", "600/m", burst=20).capacity == 20


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"limit": 0}, "limit"), ({"limit": 2.5}, "limit"), ({"limit": 3, "lease": 0}, "lease")],
)
def test_concurrency_limit_rejects_bad_values(kwargs, field):
    """limit is an int >= 1; lease > 0."""
    with pytest.raises((ValueError, TypeError), match=field):
        ConcurrencyLimit("pool", **kwargs)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf])
@pytest.mark.parametrize("field", ["window", "open_for", "open_for_max", "probe_lease"])
def test_every_breaker_duration_must_be_a_positive_number(field, value):
    """0, a negative, NaN or infinity for any duration is a ValueError naming the field."""
    with pytest.raises(ValueError, match=rf"CircuitBreaker: {field} must be > 0"):
        CircuitBreaker("p", **{field: value})
