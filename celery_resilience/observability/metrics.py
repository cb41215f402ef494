"""Prometheus metrics, fed by :mod:`celery_resilience.signals`.

Optional: ``pip install celery-resilience[prometheus]``. Turn them on in the worker with
the setting ``resilience_metrics = True`` (or call :func:`enable_metrics` in every
process that runs tasks, before the pool forks)::

    celery_resilience_attempts_total{task, verdict}   success, transient, permanent,
                                                      rate_limited, deferred
    celery_resilience_attempt_duration_seconds{task, verdict}   histogram (body ran)
    celery_resilience_retries_total{task}
    celery_resilience_retry_countdown_seconds{task}   histogram
    celery_resilience_deferrals_total{task, reason}   breaker, retry_budget, rate_limit,
                                                      concurrency, attempt, backend,
                                                      schedule
    celery_resilience_deferral_wait_seconds{task, reason}       histogram
    celery_resilience_gave_up_total{task}
    celery_resilience_dead_letters_total{task, verdict}
    celery_resilience_limiter_grants_total{name}      calls a rate limiter let through
    celery_resilience_limiter_pauses_total{name}      pauses from a 429's Retry-After
    celery_resilience_limiter_in_place_seconds_total{name}
                                                      pool seconds spent waiting for a
                                                      booked slot a moment away
    celery_resilience_limiter_wait_seconds{name}      gauge: a new call's wait now
    celery_resilience_backend_fallbacks_total
    celery_resilience_backend_fallback_active         gauge: 1 while the store fails
    celery_resilience_breaker_state{name}             see BREAKER_STATE_VALUES
    celery_resilience_parked{reason}                  tasks parked, waiting or claimed
    celery_resilience_parked_claimed                  parked tasks a releaser is publishing
    celery_resilience_parked_overdue_seconds          how long the earliest waiting parked
                                                      task is past due (0: none is)

Under the prefork pool every process counts on its own: set ``PROMETHEUS_MULTIPROC_DIR``
(an empty directory) in the worker's environment, and expose the sum with
:func:`serve_metrics` or the setting ``resilience_metrics_port`` (docs/metrics.md).
The gauges use ``multiprocess_mode="mostrecent"``: a breaker, a limiter and the parked
set are shared, so their value is the last one any process saw, not a sum or a maximum
over processes. The worker bootstep sets them every ``resilience_metrics_interval``
seconds.

It is a little over 400 lines because each metric is declared once here, with its help
text, labels and buckets, beside the one small function that feeds it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from celery.signals import worker_process_shutdown

from celery_resilience import signals
from celery_resilience.core.gates import BreakerState
from celery_resilience.state.parked import PARK_REASONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from celery_resilience.state.parked import ParkedSummary

__all__ = [
    "BREAKER_STATE_VALUES",
    "COUNTDOWN_BUCKETS",
    "DEFAULT_NAMESPACE",
    "DURATION_BUCKETS",
    "Metrics",
    "count_dead_letter",
    "count_limiter_grant",
    "count_limiter_in_place",
    "count_limiter_pause",
    "disable_metrics",
    "enable_metrics",
    "metrics_registry",
    "serve_metrics",
    "set_breaker_state",
    "set_fallback_active",
    "set_limiter_wait",
    "set_parked",
]

DEFAULT_NAMESPACE = "celery_resilience"
#: The value of the ``breaker_state`` gauge for each state.
BREAKER_STATE_VALUES = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
    BreakerState.FORCED_OPEN: 3,
    BreakerState.FORCED_CLOSED: 4,
}
#: Buckets (seconds) of the attempt duration histogram: an HTTP call, up to a minute.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets (seconds) of the retry countdown and deferral wait histograms: up to an hour.
COUNTDOWN_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
_MISSING = (
    "celery-resilience metrics need prometheus-client: pip install celery-resilience[prometheus]"
)


def _prometheus() -> Any:
    try:
        import prometheus_client  # noqa: PLC0415 - optional dependency
        import prometheus_client.multiprocess  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return prometheus_client


@dataclass(frozen=True, slots=True)
class Metrics:
    """The metric objects, once enabled."""

    attempts: Counter
    attempt_duration: Histogram
    retries: Counter
    retry_countdown: Histogram
    deferrals: Counter
    deferral_wait: Histogram
    gave_up: Counter
    dead_letters: Counter
    limiter_grants: Counter
    limiter_pauses: Counter
    limiter_in_place: Counter
    limiter_wait: Gauge
    backend_fallbacks: Counter
    backend_fallback_active: Gauge
    breaker_state: Gauge
    registry: CollectorRegistry | None
    keys_live: Gauge | None = None
    breaker_keys_open: Gauge | None = None
    parked: Gauge | None = None
    parked_claimed: Gauge | None = None
    parked_overdue: Gauge | None = None

    def collectors(self) -> list[Any]:
        """Every metric object (not the registry)."""
        found = (getattr(self, f.name) for f in fields(self) if f.name != "registry")
        return [metric for metric in found if metric is not None]


_metrics: Metrics | None = None


def _task_name(sender: object) -> str:
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else str(sender)


def _seconds(value: Any) -> float | None:
    """A non-negative number of seconds, or None when the signal carried none."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return max(float(value), 0.0)


def _on_succeeded(sender: object = None, duration: Any = None, **_: Any) -> None:
    if _metrics is not None:
        task = _task_name(sender)
        _metrics.attempts.labels(task, "success").inc()
        if (seconds := _seconds(duration)) is not None:
            _metrics.attempt_duration.labels(task, "success").observe(seconds)


def _on_failed(sender: object = None, verdict: Any = None, duration: Any = None, **_: Any) -> None:
    if _metrics is not None:
        task = _task_name(sender)
        value = getattr(verdict, "value", str(verdict))
        _metrics.attempts.labels(task, value).inc()
        if (seconds := _seconds(duration)) is not None:
            _metrics.attempt_duration.labels(task, value).observe(seconds)


def _on_deferred(sender: object = None, gate: str = "", countdown: Any = None, **_: Any) -> None:
    if _metrics is not None:
        task = _task_name(sender)
        _metrics.attempts.labels(task, "deferred").inc()
        _metrics.deferrals.labels(task, gate).inc()
        if (seconds := _seconds(countdown)) is not None:
            _metrics.deferral_wait.labels(task, gate).observe(seconds)


def _on_retry(sender: object = None, countdown: Any = None, **_: Any) -> None:
    if _metrics is not None:
        task = _task_name(sender)
        _metrics.retries.labels(task).inc()
        if (seconds := _seconds(countdown)) is not None:
            _metrics.retry_countdown.labels(task).observe(seconds)


def _on_gave_up(sender: object = None, **_: Any) -> None:
    if _metrics is not None:
        _metrics.gave_up.labels(_task_name(sender)).inc()


def _on_fallback(**_: Any) -> None:
    if _metrics is not None:
        _metrics.backend_fallbacks.inc()


def _on_breaker(name: str = "", new: Any = None, key: str | None = None, **_: Any) -> None:
    # one key of a keyed breaker is not the name's state (see set_breaker_keys_open)
    if isinstance(new, BreakerState) and key is None:
        set_breaker_state(name, new)


def _on_process_shutdown(**_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _prometheus().multiprocess.mark_process_dead(os.getpid())


_RECEIVERS = (
    (signals.attempt_succeeded, _on_succeeded),
    (signals.attempt_failed, _on_failed),
    (signals.deferred, _on_deferred),
    (signals.retry_scheduled, _on_retry),
    (signals.gave_up, _on_gave_up),
    (signals.backend_fallback, _on_fallback),
    (signals.breaker_state_changed, _on_breaker),
    (worker_process_shutdown, _on_process_shutdown),
)


def enable_metrics(
    *, namespace: str = DEFAULT_NAMESPACE, registry: CollectorRegistry | None = None
) -> Metrics:
    """Create the metrics and connect their receivers in this process (idempotent).

    ``registry`` defaults to prometheus-client's global one. Raises ``ImportError`` naming
    the extra to install when prometheus-client is missing::

        from celery_resilience.observability.metrics import enable_metrics
        enable_metrics()
    """
    global _metrics  # noqa: PLW0603 - metrics are per process, like prometheus-client's
    if _metrics is not None:
        return _metrics
    prom = _prometheus()
    where: dict[str, Any] = {"namespace": namespace}
    if registry is not None:
        where["registry"] = registry
    metrics = Metrics(
        attempts=prom.Counter(
            "attempts",
            "Attempts of resilient tasks, by how they ended",
            ["task", "verdict"],
            **where,
        ),
        attempt_duration=prom.Histogram(
            "attempt_duration_seconds",
            "How long the task body ran, by how the attempt ended",
            ["task", "verdict"],
            buckets=DURATION_BUCKETS,
            **where,
        ),
        retries=prom.Counter("retries", "Failed attempts re-queued for a retry", ["task"], **where),
        retry_countdown=prom.Histogram(
            "retry_countdown_seconds",
            "The countdown of each retry (backoff, jitter and Retry-After)",
            ["task"],
            buckets=COUNTDOWN_BUCKETS,
            **where,
        ),
        deferrals=prom.Counter(
            "deferrals",
            "Attempts re-queued by a gate, without spending a retry",
            ["task", "reason"],
            **where,
        ),
        deferral_wait=prom.Histogram(
            "deferral_wait_seconds",
            "How long a gate made an attempt wait, by gate",
            ["task", "reason"],
            buckets=COUNTDOWN_BUCKETS,
            **where,
        ),
        gave_up=prom.Counter(
            "gave_up",
            "Tasks that failed after their retries or deadline ran out",
            ["task"],
            **where,
        ),
        dead_letters=prom.Counter(
            "dead_letters",
            "Dead letters kept (permanent failures, give-ups, refusals), by the last verdict",
            ["task", "verdict"],
            **where,
        ),
        limiter_grants=prom.Counter(
            "limiter_grants",
            "Attempts a rate limiter let through",
            ["name"],
            **where,
        ),
        limiter_pauses=prom.Counter(
            "limiter_pauses",
            "Pauses of a rate limiter by a 429's Retry-After (the whole cluster waits)",
            ["name"],
            **where,
        ),
        limiter_in_place=prom.Counter(
            "limiter_in_place_seconds",
            "Seconds pool processes waited for a booked rate-limit slot a moment away",
            ["name"],
            **where,
        ),
        limiter_wait=prom.Gauge(
            "limiter_wait_seconds",
            "How long a new call would wait for its rate limiter now (pause included)",
            ["name"],
            multiprocess_mode="mostrecent",
            **where,
        ),
        backend_fallbacks=prom.Counter(
            "backend_fallbacks",
            "Gate calls answered by the per-process fallback (state store unreachable)",
            **where,
        ),
        backend_fallback_active=prom.Gauge(
            "backend_fallback_active",
            "1 while the state store cannot be reached and the fallback answers, else 0",
            multiprocess_mode="mostrecent",
            **where,
        ),
        breaker_state=prom.Gauge(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open, 3 forced open, 4 forced closed",
            ["name"],
            multiprocess_mode="mostrecent",
            **where,
        ),
        registry=registry,
        keys_live=prom.Gauge(
            "keys_live",
            "Live keys of a keyed breaker or limit (kind: breaker, limiter, concurrency)",
            ["kind", "name"],
            multiprocess_mode="mostrecent",
            **where,
        ),
        breaker_keys_open=prom.Gauge(
            "breaker_keys_open",
            "Live keys of a keyed circuit breaker whose breaker is open",
            ["name"],
            multiprocess_mode="mostrecent",
            **where,
        ),
        parked=prom.Gauge(
            "parked",
            "Tasks parked outside the workers until due (waiting or being published)",
            ["reason"],
            multiprocess_mode="mostrecent",
            **where,
        ),
        parked_claimed=prom.Gauge(
            "parked_claimed",
            "Parked tasks a releaser has claimed and is publishing",
            multiprocess_mode="mostrecent",
            **where,
        ),
        parked_overdue=prom.Gauge(
            "parked_overdue_seconds",
            "How long the earliest waiting parked task is past its due time (0: none is)",
            multiprocess_mode="mostrecent",
            **where,
        ),
    )
    _metrics = metrics
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False)
    return metrics


def disable_metrics() -> None:
    """Disconnect the receivers and unregister the metrics (for tests)."""
    global _metrics
    metrics, _metrics = _metrics, None
    for signal, receiver in _RECEIVERS:
        signal.disconnect(receiver)
    if metrics is None:
        return
    registry = metrics.registry if metrics.registry is not None else _prometheus().REGISTRY
    for metric in metrics.collectors():
        registry.unregister(metric)


def set_breaker_state(name: str, state: BreakerState) -> None:
    """Set the ``breaker_state`` gauge of ``name`` (nothing when metrics are off)."""
    if _metrics is not None:
        _metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUES[state])


def set_keys(kind: str, name: str, live: int, open_keys: int | None = None) -> None:
    """Set ``keys_live`` of a keyed ``kind`` ("breaker", "limiter", "concurrency")
    ``name``, and for a breaker ``breaker_keys_open`` (nothing when metrics are off)."""
    if _metrics is None:
        return
    if _metrics.keys_live is not None:
        _metrics.keys_live.labels(kind, name).set(live)
    if open_keys is not None and _metrics.breaker_keys_open is not None:
        _metrics.breaker_keys_open.labels(name).set(open_keys)


def count_limiter_grant(name: str) -> None:
    """Count an attempt that the rate limiter ``name`` let through."""
    if _metrics is not None:
        _metrics.limiter_grants.labels(name).inc()


def count_limiter_pause(name: str) -> None:
    """Count a pause of the rate limiter ``name`` (a 429 with ``Retry-After``)."""
    if _metrics is not None:
        _metrics.limiter_pauses.labels(name).inc()


def count_limiter_in_place(name: str, seconds: float) -> None:
    """Count ``seconds`` that a pool process waited for a slot of the rate limiter
    ``name`` (a booked slot a moment away, waited for in place)."""
    if _metrics is not None:
        _metrics.limiter_in_place.labels(name).inc(seconds)


def set_limiter_wait(name: str, seconds: float) -> None:
    """Set the ``limiter_wait_seconds`` gauge of ``name``."""
    if _metrics is not None:
        _metrics.limiter_wait.labels(name).set(max(seconds, 0.0))


def count_dead_letter(task: str, verdict: str) -> None:
    """Count a dead letter kept for ``task`` (``verdict``: its last failure's)."""
    if _metrics is not None:
        _metrics.dead_letters.labels(task, verdict).inc()


def set_fallback_active(active: bool) -> None:
    """Set the ``backend_fallback_active`` gauge (1 while the fallback answers)."""
    if _metrics is not None:
        _metrics.backend_fallback_active.set(1 if active else 0)


def set_parked(summary: ParkedSummary) -> None:
    """Set the parked gauges from a summary of the parked set (nothing when metrics are off)."""
    metrics = _metrics
    if metrics is None or metrics.parked is None:
        return
    for reason in sorted({*PARK_REASONS, *summary.by_reason}):
        metrics.parked.labels(reason).set(summary.by_reason.get(reason, 0))
    if metrics.parked_claimed is not None:
        metrics.parked_claimed.set(summary.claimed)
    if metrics.parked_overdue is not None:
        due_in = summary.oldest_due_in
        metrics.parked_overdue.set(0.0 if due_in is None else max(-due_in, 0.0))


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: every process's metrics under ``PROMETHEUS_MULTIPROC_DIR``
    when it is set, else this process's global registry."""
    prom = _prometheus()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry: CollectorRegistry = prom.REGISTRY
        return registry
    registry = prom.CollectorRegistry()
    prom.multiprocess.MultiProcessCollector(registry)
    return registry


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` over HTTP from a thread of this process; returns the server
    (``server.shutdown()`` stops it). Port 0 picks a free port (``server.server_port``)."""
    server, _thread = _prometheus().start_http_server(port, addr, registry=metrics_registry())
    return server
