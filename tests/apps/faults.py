"""The resilient test app, with knobs for fault injection (from the environment).

With ``RESILIENCE_TEST_VISIBILITY``, unacknowledged messages are swept every second.
``RESILIENCE_TEST_ATTEMPT_LEASE``: ``resilience_attempt_lease`` (seconds), so that a
killed worker's attempt comes back soon; ``RESILIENCE_TEST_CLOCK_SKEW``: seconds added to
this process's clock as celery-resilience reads it (``celery_resilience.core.clock``), to show
that breakers and limiters never use it. ``RESILIENCE_TEST_RETRY_PAUSE``: seconds a pool
process waits (in Celery's ``task_retry`` signal) between publishing a retry and handing
the message back to be acknowledged, after logging "holding the acknowledgement": the
window in which a lost worker leaves a copy of an attempt whose retry is already out.
"""

from __future__ import annotations

import os
import time

from celery import signals

from celery_resilience.core import clock
from tests.apps.resilient import app

__all__ = ["app"]

if os.environ.get("RESILIENCE_TEST_VISIBILITY"):
    # sweep for unacknowledged messages every second (kombu's default is ~100 s)
    app.conf.broker_transport_options = {
        **(app.conf.broker_transport_options or {}),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("RESILIENCE_TEST_ATTEMPT_LEASE"):
    app.conf.resilience_attempt_lease = float(os.environ["RESILIENCE_TEST_ATTEMPT_LEASE"])

_skew = float(os.environ.get("RESILIENCE_TEST_CLOCK_SKEW") or 0)
if _skew:

    def _skewed_now() -> float:
        return time.time() + _skew

    clock.now = _skewed_now

_retry_pause = float(os.environ.get("RESILIENCE_TEST_RETRY_PAUSE") or 0)
if _retry_pause:

    @signals.task_retry.connect(weak=False)
    def _hold_the_acknowledgement(request: object = None, **_: object) -> None:
        app.log.get_default_logger().warning(
            "holding the acknowledgement of %s", getattr(request, "id", "?")
        )
        time.sleep(_retry_pause)
