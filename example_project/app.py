"""The example project's Celery app, configured from the environment; JSON only, never pickle.

=========================  ================================================================
variable                   meaning (default)
=========================  ================================================================
``EXAMPLE_BROKER_URL``     the broker (``redis://localhost:6379/0``); ``amqp://`` works too
``EXAMPLE_RESULT_BACKEND`` the result backend (``redis://localhost:6379/1``)
``EXAMPLE_STATE_URL``      celery-resilience's shared state: breakers, limiters, dead
                           letters (``redis://localhost:6379/2``)
``EXAMPLE_UPSTREAM_URL``   where the billing and CRM APIs live (``http://localhost:8080``)
``EXAMPLE_NAMESPACE``      prefix of the queues, exchanges and Redis keys (``example``), so
                           that the app shares a broker or a Redis with anything else
=========================  ================================================================

Run a worker (it consumes both queues: the resilient tasks' and the plain-Celery
baseline's)::

    celery -A example_project.app worker --loglevel=INFO
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

__all__ = ["BASELINE_QUEUE", "NAMESPACE", "QUEUE", "UPSTREAM_URL", "app"]

BROKER_URL = os.environ.get("EXAMPLE_BROKER_URL", "redis://localhost:6379/0")
RESULT_BACKEND = os.environ.get("EXAMPLE_RESULT_BACKEND", "redis://localhost:6379/1")
STATE_URL = os.environ.get("EXAMPLE_STATE_URL", "redis://localhost:6379/2")
UPSTREAM_URL = os.environ.get("EXAMPLE_UPSTREAM_URL", "http://localhost:8080").rstrip("/")
NAMESPACE = os.environ.get("EXAMPLE_NAMESPACE", "example")

QUEUE = NAMESPACE
"""The queue of the resilient tasks (:mod:`example_project.tasks`)."""
BASELINE_QUEUE = f"{NAMESPACE}.baseline"
"""The queue of the plain-Celery tasks (:mod:`example_project.baseline`)."""

app = Celery(
    "example_project",
    broker=BROKER_URL,
    backend=RESULT_BACKEND,
    include=["example_project.tasks", "example_project.baseline"],
)
app.conf.update(
    # JSON everywhere: messages, results, events
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # celery-resilience keeps its breakers and limiters here, under the namespace
    resilience_backend_url=STATE_URL,
    resilience_key_prefix=NAMESPACE,
    # a named policy, which the billing tasks follow; change it while they run with
    #   celery -A example_project.app resilience policy set billing breaker.open_for=30
    resilience_policies={
        "billing": {
            "max_retries": 8,
            "breaker": {"failure_rate": 0.5, "minimum_calls": 5, "open_for": 5.0},
        },
    },
    # a private namespace for queues, events and remote control
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE), Queue(BASELINE_QUEUE)],
    event_exchange=f"{NAMESPACE}.events",
    control_exchange=f"{NAMESPACE}.control",
    result_backend_transport_options={"global_keyprefix": f"{NAMESPACE}:"},
    # task events, so that Flower shows every retry with its reason
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
if BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
    app.conf.broker_transport_options = {"global_keyprefix": f"{NAMESPACE}:"}
