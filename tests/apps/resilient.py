"""Resilient tasks against the upstream, configured from the environment.

Besides the variables of :mod:`tests.helpers.celery_apps`: ``RESILIENCE_TEST_STATE`` (the
state store's URL; default: the broker's when it is Redis) and ``RESILIENCE_TEST_PREFIX``
(the key prefix, so each test's breakers and limiters are its own).
"""

from __future__ import annotations

import os
from typing import Any

import tenacity

from celery_resilience import CircuitBreaker, ConcurrencyLimit, RateLimit, resilient_task
from tests.helpers.celery_apps import ENV_UPSTREAM, app_from_env

app = app_from_env("resilient")
app.conf.update(
    resilience_backend_url=os.environ.get("RESILIENCE_TEST_STATE") or None,
    resilience_key_prefix=os.environ.get("RESILIENCE_TEST_PREFIX") or "resilience",
    task_acks_late=os.environ.get("RESILIENCE_TEST_ACKS_LATE") == "1",
)
if os.environ.get("RESILIENCE_TEST_VISIBILITY"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["RESILIENCE_TEST_VISIBILITY"])
    }

#: Quick backoff for tests: full jitter, 0.25 s base, 2 s cap.
FAST = tenacity.wait_random_exponential(multiplier=0.25, max=2)


def _call(task: Any, path: str, method: str, timeout: float, base: str | None) -> dict[str, Any]:
    url = (base or os.environ[ENV_UPSTREAM]) + path
    resp = task.http.request(method, url, timeout=timeout)
    resp.raise_for_status()
    return {"status": resp.status_code, "ledger": (task.request.headers or {}).get("resilience")}


@resilient_task(app=app, bind=True, name="res.call", backoff=FAST)
def call(
    self: Any, path: str, method: str = "GET", timeout: float = 5.0, base: str | None = None
) -> dict[str, Any]:
    """Call the upstream; defaults: max_retries=5."""
    return _call(self, path, method, timeout, base)


@resilient_task(app=app, bind=True, name="res.call3", backoff=FAST, max_retries=3)
def call3(self: Any, path: str, method: str = "GET") -> dict[str, Any]:
    """Call the upstream; max_retries=3."""
    return _call(self, path, method, 5.0, None)


@resilient_task(
    app=app, bind=True, name="res.slow_backoff", max_retries=2, backoff=tenacity.wait_fixed(3)
)
def slow_backoff(self: Any, path: str, base: str | None = None) -> dict[str, Any]:
    """Call the upstream (or ``base``); a fixed 3 s countdown between attempts."""
    return _call(self, path, "GET", 5.0, base)


@resilient_task(
    app=app,
    bind=True,
    name="res.guarded",
    backoff=FAST,
    max_retries=8,
    breaker=CircuitBreaker("upstream", minimum_calls=5, open_for=2.0),
)
def guarded(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'upstream'."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app, bind=True, name="res.limited", backoff=FAST, limiter=RateLimit("api", "10/s")
)
def limited(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream through the rate limit 'api' (10/s)."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.pooled",
    backoff=FAST,
    concurrency=ConcurrencyLimit("api", 3, lease=5.0),
)
def pooled(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream holding one of 3 slots of 'api'."""
    return _call(self, path, "GET", 10.0, None)
