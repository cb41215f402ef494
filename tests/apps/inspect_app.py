"""The resilient test app, plus what the inspection tests need (CLI, Flower, metrics).

Besides the variables of :mod:`tests.apps.resilient`: ``RESILIENCE_TEST_METRICS=1`` turns
metrics on (breaker gauges refreshed every 0.2 s), ``RESILIENCE_TEST_METRICS_PORT`` serves
them over HTTP from the worker. ``RESILIENCE_TEST_ODD_NAME=1`` also declares
``inspect.odd``, behind a breaker whose name needs escaping (:data:`ODD_NAME`);
``RESILIENCE_TEST_STATS_SECTION=0`` sets ``resilience_stats_section = False``.
"""

from __future__ import annotations

import os
from typing import Any

from celery_resilience import CircuitBreaker, resilient_task
from tests.apps.resilient import FAST, _call, app
from tests.helpers.inspection import ODD_NAME, OUTAGE

__all__ = ["app", "outage"]

if os.environ.get("RESILIENCE_TEST_METRICS") == "1":
    app.conf.update(resilience_metrics=True, resilience_metrics_interval=0.2)
    if os.environ.get("RESILIENCE_TEST_METRICS_PORT"):
        app.conf.resilience_metrics_port = int(os.environ["RESILIENCE_TEST_METRICS_PORT"])

if os.environ.get("RESILIENCE_TEST_STATS_SECTION") == "0":
    app.conf.resilience_stats_section = False


@resilient_task(
    app=app, bind=True, name="inspect.outage", backoff=FAST, max_retries=3, breaker=OUTAGE
)
def outage(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'inspect-outage'."""
    return _call(self, path, "GET", 5.0, None)


if os.environ.get("RESILIENCE_TEST_ODD_NAME") == "1":

    @resilient_task(
        app=app, bind=True, name="inspect.odd", backoff=FAST, breaker=CircuitBreaker(ODD_NAME)
    )
    def odd(self: Any, path: str) -> dict[str, Any]:
        """Call the upstream behind the oddly named breaker."""
        return _call(self, path, "GET", 5.0, None)
