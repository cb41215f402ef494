"""The task of the reliability benchmark: one side-effecting call per task, secrets planted.

``bench.reliable.charge(key, url)`` POSTs ``{"key": key}`` to ``url`` as an application
with an API key would: the key in the query string (``?api_key=...``) and in an
``Authorization`` header. The library's session adds an ``Idempotency-Key`` to the POST, the
same on every retry of the task, so the upstream can count each task's effect once. A 4xx
answer other than 429 fails the task for good with an error that quotes the request's
headers, caused by ``requests``' error that quotes its URL: the secret sits in an
exception's message and in its cause. 429 and 5xx raise ``requests``' ``HTTPError``, whose
message holds the URL.

The task's ``time_limit`` (20 s) bounds its attempt lease, so that a copy redelivered after
its worker died runs within that. The secret is ``BENCH_SECRET`` from the environment;
settings come as in :mod:`benchmarks.apps.config` (``BENCH_CONF`` for a fault's own, e.g.
``task_acks_late``).
"""

from __future__ import annotations

import os
from typing import Any

import requests
import tenacity

from benchmarks.apps.config import make_app
from celery_resilience import (
    CircuitBreaker,
    PermanentError,
    RateLimit,
    ResilientTask,
    resilient_task,
)

__all__ = ["ENV_SECRET", "app", "charge"]

ENV_SECRET = "BENCH_SECRET"

app = make_app("bench_reliable")

#: Short backoff (full jitter, 0.25 s base, 2 s cap), so that a bounded run sees many retries.
QUICK = tenacity.wait_random_exponential(multiplier=0.25, max=2)


@resilient_task(
    app=app, bind=True, name="bench.reliable.charge", backoff=QUICK, max_retries=12,
    time_limit=20,
    breaker=CircuitBreaker("reliable", minimum_calls=5, open_for=2.0),
    limiter=RateLimit("reliable", "100/s", burst=20),
)  # fmt: skip
def charge(self: ResilientTask, key: str, url: str) -> dict[str, Any]:
    """POST ``{"key": key}`` to ``url`` with the planted secret; refused answers fail."""
    secret = os.environ.get(ENV_SECRET, "")
    resp = self.http.post(
        f"{url}?api_key={secret}",
        json={"key": key},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    try:
        resp.raise_for_status()
    except requests.HTTPError as exc:
        if resp.status_code == 429 or resp.status_code >= 500:
            raise
        raise PermanentError(
            f"refused with {resp.status_code}: request headers {dict(resp.request.headers)}"
        ) from exc
    return {"key": key, "status": resp.status_code}
