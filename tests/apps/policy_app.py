"""Tasks that name policies, configured from the environment (see tests.apps.resilient)."""

from __future__ import annotations

import os
from typing import Any

from celery_resilience import CircuitBreaker, resilient_task
from tests.helpers.celery_apps import ENV_UPSTREAM, app_from_env

app = app_from_env("policies")
app.conf.update(
    resilience_backend_url=os.environ.get("RESILIENCE_TEST_STATE") or None,
    resilience_key_prefix=os.environ.get("RESILIENCE_TEST_PREFIX") or "resilience",
    resilience_policies={
        "payments": {
            "max_retries": 3,
            "backoff": {"kind": "full_jitter", "base": 0.1, "cap": 0.5},
        },
        "pair": {"max_retries": 1, "deadline": 10},
    },
)

GUARD = CircuitBreaker("guard", minimum_calls=50, open_for=30.0)


def _get(task: Any, path: str) -> int:
    resp = task.http.get(os.environ[ENV_UPSTREAM] + path, timeout=5)
    resp.raise_for_status()
    return resp.status_code


@resilient_task(app=app, bind=True, name="pol.pay", policy="payments")
def pay(self: Any, path: str) -> int:
    """Call the upstream under the policy 'payments'."""
    return _get(self, path)


@resilient_task(app=app, bind=True, name="pol.probe", policy="pair")
def probe(self: Any) -> list[Any]:
    """Report the options this attempt runs with."""
    opts = self.resilience_options()
    return [opts.max_retries, opts.deadline]


def cached_rate(path: str) -> str:
    """The fallback: what the task answers while its breaker is open."""
    return f"cached {path}"


@resilient_task(app=app, bind=True, name="pol.with_fallback", breaker=GUARD, on_open=cached_rate)
def with_fallback(self: Any, path: str) -> Any:
    """Call the upstream; the fallback answers while the breaker is open."""
    return _get(self, path)


@resilient_task(app=app, bind=True, name="pol.fail_fast", breaker=GUARD, on_open="fail")
def fail_fast(self: Any, path: str) -> int:
    """Call the upstream; fail at once while the breaker is open."""
    return _get(self, path)
