"""The public contract: the names that code outside this repository depends on, exactly."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

import celery_resilience
from celery_resilience import signals

CONTRACT = {
    "ResilientTask",
    "resilient_task",
    "CircuitBreaker",
    "RateLimit",
    "ConcurrencyLimit",
    "Verdict",
    "TransientError",
    "PermanentError",
    "signals",
}


def test_every_contract_name_is_exported():
    """The fixed names are importable from the package and listed in __all__."""
    assert set(celery_resilience.__all__) >= CONTRACT
    for name in celery_resilience.__all__:
        assert hasattr(celery_resilience, name), name
    assert sorted(celery_resilience.__all__) == celery_resilience.__all__


def _params(callable_: object) -> list[tuple[str, str]]:
    return [(p.name, p.kind.name) for p in inspect.signature(callable_).parameters.values()]


def test_policy_signatures_are_as_documented():
    """Policies take their name (and rate, limit) positionally, every option by keyword."""
    kw = "KEYWORD_ONLY"
    assert _params(celery_resilience.CircuitBreaker) == [
        ("name", "POSITIONAL_OR_KEYWORD"),
        ("failure_rate", kw),
        ("minimum_calls", kw),
        ("window", kw),
        ("open_for", kw),
        ("open_for_max", kw),
        ("half_open_calls", kw),
        ("probe_lease", kw),
        ("confidence", kw),
        ("throttle", kw),
        ("retry_budget", kw),
        ("retry_floor", kw),
        ("retry_exhausted", kw),
        ("key", kw),
        ("max_keys", kw),
        ("bound_key", kw),
    ]
    assert _params(celery_resilience.RateLimit) == [
        ("name", "POSITIONAL_OR_KEYWORD"),
        ("rate", "POSITIONAL_OR_KEYWORD"),
        ("burst", kw),
        ("key", kw),
        ("max_keys", kw),
        ("bound_key", kw),
    ]
    assert _params(celery_resilience.ConcurrencyLimit) == [
        ("name", "POSITIONAL_OR_KEYWORD"),
        ("limit", "POSITIONAL_OR_KEYWORD"),
        ("lease", kw),
        ("key", kw),
        ("max_keys", kw),
        ("bound_key", kw),
    ]


def test_verdicts_and_signals_are_named_as_documented():
    """Verdict members and the six signals of the contract exist."""
    assert {v.name for v in celery_resilience.Verdict} == {
        "TRANSIENT",
        "PERMANENT",
        "RATE_LIMITED",
    }
    for name in (
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "deferred",
        "gave_up",
        "breaker_state_changed",
    ):
        assert getattr(signals, name).name == name


def test_task_options_are_class_attributes():
    """Every task option of the contract is an attribute of ResilientTask."""
    for option in (
        "breaker",
        "limiter",
        "concurrency",
        "max_retries",
        "deadline",
        "backoff",
        "classifier",
        "retry_on",
        "give_up_on",
    ):
        assert hasattr(celery_resilience.ResilientTask, option), option


def test_the_command_is_registered_for_celery():
    """`celery -A proj resilience` comes through the celery.commands entry point."""
    commands = {ep.name: ep.value for ep in entry_points(group="celery.commands")}
    assert commands.get("resilience") == "celery_resilience.cli:resilience"
