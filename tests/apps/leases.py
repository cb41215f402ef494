"""Tasks whose bodies outlast their leases' defaults: a slow probe, a body whose pool
process is killed. The app and its environment are those of :mod:`tests.apps.resilient`."""

from __future__ import annotations

import os
from typing import Any

from celery_resilience import CircuitBreaker, resilient_task
from tests.apps.resilient import FAST, _call, app

__all__ = ["app"]

#: res.slow_probe: a breaker that opens after 2 failures in 2 calls, for 1 s (one probe),
#: and bodies that may run up to 20 s.
SLOW_PROBE = {
    "breaker": CircuitBreaker("slow-probe", minimum_calls=2, open_for=1.0),
    "time_limit": 20,
    "max_retries": 20,
}
#: res.lost_body: its message goes back to the queue when its pool process is lost.
REQUEUED = {"acks_late": True, "reject_on_worker_lost": True}
#: res.lost_probe: the same, behind a breaker that opens on 1 failure, for 0.5 s.
LOST_PROBE = {**REQUEUED, "breaker": CircuitBreaker("lost-probe", minimum_calls=1, open_for=0.5)}


@resilient_task(app=app, bind=True, name="res.slow_probe", backoff=FAST, **SLOW_PROBE)
def slow_probe(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'slow-probe'."""
    return _call(self, path, "GET", 15.0, None)


@resilient_task(app=app, bind=True, name="res.lost_body", backoff=FAST, **REQUEUED)
def lost_body(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream, naming this process (``?pid=``)."""
    return _call(self, f"{path}?pid={os.getpid()}", "GET", 60.0, None)


@resilient_task(app=app, bind=True, name="res.lost_probe", backoff=FAST, **LOST_PROBE)
def lost_probe(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'lost-probe', naming this process (``?pid=``)."""
    return _call(self, f"{path}?pid={os.getpid()}", "GET", 60.0, None)
