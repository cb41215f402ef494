"""Prometheus metrics: fed by the signals, summed over a prefork pool, equal to what the
upstream saw."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from celery_resilience import Verdict, signals
from celery_resilience.core.gates import BreakerState
from celery_resilience.observability.metrics import (
    count_dead_letter,
    count_limiter_grant,
    count_limiter_in_place,
    count_limiter_pause,
    disable_metrics,
    enable_metrics,
    set_fallback_active,
    set_keys,
    set_limiter_wait,
)
from tests.helpers.metrics import samples as _samples
from tests.helpers.metrics import value as _value


@pytest.fixture
def local_metrics() -> Iterator[CollectorRegistry]:
    """Metrics enabled in this process on a private registry; disabled afterwards."""
    disable_metrics()
    registry = CollectorRegistry()
    enable_metrics(registry=registry)
    yield registry
    disable_metrics()


class _Task:
    name = "shop.charge"


def test_signals_feed_the_counters_and_the_gauge(local_metrics: CollectorRegistry):
    """Each signal moves its metric; the gauge holds the breaker's last state."""
    task = _Task()
    signals.attempt_succeeded.send(sender=task, task_id="t", attempt=1, duration=0.1)
    for verdict in (Verdict.TRANSIENT, Verdict.TRANSIENT, Verdict.PERMANENT, Verdict.RATE_LIMITED):
        signals.attempt_failed.send(
            sender=task, task_id="t", attempt=1, verdict=verdict, cause="c", exc=None, duration=0.1
        )
    signals.retry_scheduled.send(
        sender=task,
        task_id="t",
        attempt=1,
        countdown=1.0,
        verdict=Verdict.TRANSIENT,
        cause="c",
        reason="r",
    )
    signals.deferred.send(
        sender=task, task_id="t", attempt=1, gate="breaker", name="pay", countdown=1.0, reason="r"
    )
    signals.gave_up.send(sender=task, task_id="t", attempt=3, reason="r", exc=None, history=())
    signals.backend_fallback.send(sender="redis", mode="allow")
    for new in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        signals.breaker_state_changed.send(
            sender="pay", name="pay", old=BreakerState.CLOSED, new=new, failure_rate=1.0, calls=5
        )

    got = _samples(local_metrics)
    attempts = "celery_resilience_attempts_total"
    assert _value(got, attempts, task="shop.charge", verdict="success") == 1
    assert _value(got, attempts, task="shop.charge", verdict="transient") == 2
    assert _value(got, attempts, task="shop.charge", verdict="permanent") == 1
    assert _value(got, attempts, task="shop.charge", verdict="rate_limited") == 1
    assert _value(got, attempts, task="shop.charge", verdict="deferred") == 1
    assert _value(got, "celery_resilience_retries_total", task="shop.charge") == 1
    assert (
        _value(got, "celery_resilience_deferrals_total", task="shop.charge", reason="breaker") == 1
    )
    assert _value(got, "celery_resilience_gave_up_total", task="shop.charge") == 1
    assert _value(got, "celery_resilience_backend_fallbacks_total") == 1
    assert _value(got, "celery_resilience_breaker_state", name="pay") == 1


def test_histograms_keep_the_shape_and_the_runtime_counts_feed_their_metrics(
    local_metrics: CollectorRegistry,
):
    """Durations, countdowns and waits land in histogram buckets; grants, pauses, waits in
    place, dead letters, limiter waits and the fallback flag move their own metrics."""
    task = _Task()
    signals.attempt_succeeded.send(sender=task, task_id="t", attempt=1, duration=0.03)
    signals.attempt_failed.send(
        sender=task, task_id="t", attempt=1, verdict=Verdict.TRANSIENT, cause="c", exc=None,
        duration=2.0,
    )  # fmt: skip
    for countdown in (0.4, 7.0, 45.0):
        signals.retry_scheduled.send(
            sender=task, task_id="t", attempt=1, countdown=countdown, verdict=Verdict.TRANSIENT,
            cause="c", reason="r",
        )  # fmt: skip
    signals.deferred.send(
        sender=task, task_id="t", attempt=1, gate="rate_limit", name="api", countdown=0.2,
        reason="r",
    )  # fmt: skip
    count_limiter_grant("api")
    count_limiter_grant("api")
    count_limiter_pause("api")
    count_limiter_in_place("api", 0.25)
    count_limiter_in_place("api", 0.5)
    set_limiter_wait("api", 1.5)
    count_dead_letter("shop.charge", "permanent")
    set_fallback_active(True)

    got = _samples(local_metrics)
    duration = "celery_resilience_attempt_duration_seconds"
    assert _value(got, f"{duration}_count", task="shop.charge", verdict="success") == 1
    assert _value(got, f"{duration}_bucket", task="shop.charge", verdict="success", le="0.05") == 1
    assert _value(got, f"{duration}_bucket", task="shop.charge", verdict="transient", le="1.0") == 0
    countdown = "celery_resilience_retry_countdown_seconds"
    assert _value(got, f"{countdown}_bucket", task="shop.charge", le="10.0") == 2
    assert _value(got, f"{countdown}_bucket", task="shop.charge", le="+Inf") == 3
    assert _value(got, f"{countdown}_sum", task="shop.charge") == pytest.approx(52.4)
    wait = "celery_resilience_deferral_wait_seconds"
    assert _value(got, f"{wait}_count", task="shop.charge", reason="rate_limit") == 1
    assert _value(got, "celery_resilience_limiter_grants_total", name="api") == 2
    assert _value(got, "celery_resilience_limiter_pauses_total", name="api") == 1
    assert _value(got, "celery_resilience_limiter_in_place_seconds_total", name="api") == 0.75
    assert _value(got, "celery_resilience_limiter_wait_seconds", name="api") == 1.5
    assert (
        _value(got, "celery_resilience_dead_letters_total", task="shop.charge", verdict="permanent")
        == 1
    )
    assert _value(got, "celery_resilience_backend_fallback_active") == 1


def test_enable_is_idempotent_and_the_namespace_can_be_dropped():
    """``enable_metrics`` twice returns the same metrics; namespace "" gives bare names."""
    disable_metrics()
    registry = CollectorRegistry()
    try:
        first = enable_metrics(namespace="", registry=registry)
        assert enable_metrics(namespace="", registry=registry) is first
        names = {family.name for family in registry.collect()}
        assert {
            "attempts",
            "retries",
            "deferrals",
            "gave_up",
            "backend_fallbacks",
            "breaker_state",
        } <= names
    finally:
        disable_metrics()


def test_without_prometheus_client_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
):
    """prometheus-client is optional: the ImportError names the extra."""
    disable_metrics()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install celery-resilience\[prometheus\]"):
        enable_metrics()


def test_keyed_names_have_their_gauges_and_a_key_does_not_set_the_name_state(
    local_metrics: CollectorRegistry,
):
    """keys_live and breaker_keys_open are set per keyed name; a keyed breaker's
    transition leaves breaker_state (the unkeyed name's) alone."""
    set_keys("breaker", "tenants", 7, 2)
    set_keys("limiter", "crm", 3)
    signals.breaker_state_changed.send(
        sender="tenants",
        name="tenants",
        old=BreakerState.CLOSED,
        new=BreakerState.OPEN,
        failure_rate=1.0,
        calls=5,
        key="acme",
    )
    got = _samples(local_metrics)
    live = "celery_resilience_keys_live"
    assert _value(got, live, kind="breaker", name="tenants") == 7
    assert _value(got, live, kind="limiter", name="crm") == 3
    assert _value(got, "celery_resilience_breaker_keys_open", name="tenants") == 2
    assert ("celery_resilience_breaker_state", (("name", "tenants"),)) not in got
