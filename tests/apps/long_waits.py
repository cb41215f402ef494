"""The resilient test app with a breaker that stays open for a long while, for waits longer
than a broker holds a message.

``RESILIENCE_TEST_CONSUMER_TIMEOUT``: ``resilience_consumer_timeout`` (seconds), the
private RabbitMQ node's ``consumer_timeout``.
"""

from __future__ import annotations

import os
from typing import Any

from celery_resilience import CircuitBreaker, resilient_task
from tests.apps.resilient import FAST, app
from tests.helpers.celery_apps import ENV_UPSTREAM

__all__ = ["LONG_BREAKER", "app"]

if os.environ.get("RESILIENCE_TEST_CONSUMER_TIMEOUT"):
    app.conf.resilience_consumer_timeout = float(os.environ["RESILIENCE_TEST_CONSUMER_TIMEOUT"])

#: Opens at the first failure and stays open 40 s; a task it defers waits 40 to 80 s (the
#: open time plus a jitter of up to as much again). A short probe lease: a task that wakes
#: while the probe is in flight waits a few seconds more, not another 40.
LONG_BREAKER = CircuitBreaker("long", minimum_calls=1, open_for=40.0, probe_lease=5.0)


@resilient_task(app=app, bind=True, name="res.long_breaker", backoff=FAST, breaker=LONG_BREAKER)
def long_breaker(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'long'."""
    resp = self.http.get(os.environ[ENV_UPSTREAM] + path, timeout=5.0)
    resp.raise_for_status()
    return {"status": resp.status_code}
