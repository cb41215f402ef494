"""Named policies: the schema, merging overrides, precedence, eager mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tenacity
from celery import Celery

from celery_resilience import CircuitBreaker, GaveUp, RateLimit, TransientError, resilient_task
from celery_resilience.core.limits import ConcurrencyLimit
from celery_resilience.core.options import TaskOptions
from celery_resilience.core.policies import (
    merge,
    parse_assignment,
    parse_policy,
    parse_table,
    unset,
)
from celery_resilience.integration.named import resolve
from celery_resilience.state.overrides import Override

FULL = {
    "max_retries": 8,
    "deadline": 600,
    "backoff": {"kind": "full_jitter", "base": 1.0, "cap": 60.0},
    "breaker": {"failure_rate": 0.5, "minimum_calls": 10, "open_for": 15},
    "rate_limit": "50/s",
    "concurrency": 10,
    "on_open": "fail",
}


def test_a_full_policy_becomes_task_options():
    """Every key of the schema turns into the task option it names."""
    options = parse_policy("payments", FULL)
    assert options["max_retries"] == 8
    assert options["deadline"] == 600.0
    assert isinstance(options["backoff"], tenacity.wait_random_exponential)
    assert options["breaker"] == CircuitBreaker(
        "payments", failure_rate=0.5, minimum_calls=10, open_for=15
    )
    assert options["limiter"] == RateLimit("payments", "50/s")
    assert options["concurrency"] == ConcurrencyLimit("payments", 10)
    assert options["on_open"] == "fail"


def test_a_policy_may_give_its_breaker_a_retry_budget():
    raw = {"breaker": {"retry_budget": 0.2, "retry_floor": 0.5, "retry_exhausted": "give_up"}}
    breaker = parse_policy("payments", raw)["breaker"]
    assert (breaker.retry_budget, breaker.retry_floor, breaker.retry_exhausted) == (
        0.2,
        0.5,
        "give_up",
    )


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"max_retry": 3}, "max_retry=3: unknown key"),
        ({"max_retries": -1}, "max_retries=-1"),
        ({"max_retries": "3"}, 'max_retries="3"'),
        ({"deadline": 0}, "deadline=0"),
        ({"backoff": {"kind": "sometimes"}}, "backoff.kind"),
        ({"backoff": {"kind": "full_jitter", "base": 10, "cap": 1}}, "backoff.cap"),
        ({"backoff": {"kind": "fixed"}}, "backoff.seconds"),
        ({"backoff": {"knd": "fixed"}}, "backoff.knd"),
        ({"breaker": {"failure_rate": 2}}, "failure_rate"),
        ({"breaker": {"open_fr": 2}}, "breaker.open_fr"),
        ({"breaker": {"retry_budget": 0}}, "retry_budget"),
        ({"rate_limit": "10/x"}, "rate_limit"),
        ({"rate_limit": {"rate": "5/s", "burst": 0}}, "burst"),
        ({"concurrency": 0}, "concurrency"),
        ({"on_open": "explode"}, "on_open"),
    ],
)
def test_bad_policies_name_policy_key_and_value(raw, words):
    """An unknown key, a wrong type or an impossible value: ValueError naming all three."""
    with pytest.raises(ValueError, match="payments") as info:
        parse_table({"payments": raw})
    assert words in str(info.value)


def test_overrides_merge_into_nested_objects():
    """A dotted override changes one field of the breaker and keeps the others."""
    merged = merge(FULL, {"breaker": {"open_for": 120}, "rate_limit": {"burst": 5}})
    assert merged["breaker"] == {"failure_rate": 0.5, "minimum_calls": 10, "open_for": 120}
    assert merged["rate_limit"] == {"rate": "50/s", "burst": 5}
    assert parse_policy("p", merged)["limiter"] == RateLimit("p", "50/s", burst=5)


def test_unset_removes_keys_and_fields():
    """unset drops whole keys, or one field of a nested one."""
    values = {"max_retries": 1, "breaker": {"open_for": 3, "window": 9}}
    assert unset(values, ["breaker.open_for"]) == {"max_retries": 1, "breaker": {"window": 9}}
    assert unset(values, ["max_retries", "breaker"]) == {}


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("max_retries=1", {"max_retries": 1}),
        ("deadline=null", {"deadline": None}),
        ("rate_limit=20/s", {"rate_limit": "20/s"}),
        ("breaker.open_for=30.5", {"breaker": {"open_for": 30.5}}),
        ("on_open=fail", {"on_open": "fail"}),
    ],
)
def test_assignments_parse(text, change):
    """KEY=VALUE reads JSON values, else strings; dotted keys nest."""
    assert parse_assignment("p", text) == change


@pytest.mark.parametrize(
    "text", ["max_retries", "=1", "nope=1", "max_retries.x=1", "breaker.open_for.x=1"]
)
def test_bad_assignments_are_refused(text):
    """Malformed or unknown keys are refused before anything else."""
    with pytest.raises(ValueError, match="'p'"):
        parse_assignment("p", text)


def test_precedence_defaults_policy_task_overrides():
    """Defaults < configured policy < the task's explicit options < run-time overrides."""
    own = TaskOptions(max_retries=2, deadline=50.0, policy="p")
    config = {"max_retries": 8, "deadline": 600}
    explicit = frozenset({"deadline", "policy"})
    opts = resolve(own, explicit, config, Override(), "p")
    assert (opts.max_retries, opts.deadline) == (8, 50.0)
    opts = resolve(own, explicit, config, Override(3, {"deadline": 5}), "p")
    assert (opts.max_retries, opts.deadline) == (8, 5.0)


@pytest.fixture
def eager_app() -> Iterator[Celery]:
    app = Celery("policies", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        task_always_eager=True,
        task_eager_propagates=True,
        resilience_policies={"flaky": {"max_retries": 1}},
    )
    yield app
    app.close()


def test_eager_task_follows_its_named_policy(eager_app):
    """A task naming a policy takes its max_retries (no Redis needed in eager mode)."""
    calls: list[int] = []

    @resilient_task(app=eager_app, name="p.flaky", policy="flaky", shared=False)
    def flaky() -> None:
        calls.append(1)
        raise TransientError("down")

    with pytest.raises(GaveUp):
        flaky.delay()
    assert len(calls) == 2


def test_unknown_policy_fails_at_declaration(eager_app):
    """Naming a policy that the configuration lacks fails when the task is declared."""
    with pytest.raises(ValueError, match=r"'nope'.*known: flaky"):

        @resilient_task(app=eager_app, name="p.lost", policy="nope", shared=False)
        def lost() -> None: ...


def test_a_task_declared_for_one_app_stays_out_of_apps_finalized_later(eager_app):
    """A task naming a policy of its own app is not handed to another app, which may lack
    that policy; ``shared=True`` still asks for Celery's sharing."""

    @resilient_task(app=eager_app, name="p.own", policy="flaky")
    def own() -> None: ...

    @resilient_task(app=eager_app, name="p.everywhere", shared=True)
    def everywhere() -> None: ...

    other = Celery("other", broker="memory://", set_as_current=False)
    other.finalize()
    assert "p.own" in eager_app.tasks
    assert "p.own" not in other.tasks
    assert "p.everywhere" in other.tasks
    other.close()


def test_django_style_setting_is_read_through_the_namespace():
    """CELERY_RESILIENCE_POLICIES under namespace='CELERY' is resilience_policies."""
    app = Celery("django", set_as_current=False)
    try:
        app.config_from_object(
            {
                "CELERY_RESILIENCE_POLICIES": {"crm": {"max_retries": 0}},
                "CELERY_TASK_ALWAYS_EAGER": True,
            },
            namespace="CELERY",
        )

        @resilient_task(app=app, name="django.crm.sync", policy="crm", shared=False)
        def sync() -> None: ...

        assert sync.resilience_options(overrides=False).max_retries == 0
    finally:
        app.close()


def test_a_field_override_changes_the_tasks_own_breaker():
    """breaker.open_for=120 on a task with its own breaker keeps that breaker's name."""
    own = TaskOptions(breaker=CircuitBreaker("crm-eu", minimum_calls=7), policy="crm")
    explicit = frozenset({"breaker", "policy"})
    opts = resolve(
        own, explicit, {"max_retries": 1}, Override(2, {"breaker": {"open_for": 120}}), "crm"
    )
    assert opts.breaker == CircuitBreaker("crm-eu", minimum_calls=7, open_for=120)
