"""The inspection test app, plus tasks that fail with planted secrets and a topic route.

Besides the variables of :mod:`tests.apps.inspect_app`:

- ``RESILIENCE_TEST_TOPIC``: the name of a topic exchange; the worker then also consumes
  the queue ``<queue>-topic``, bound to it with ``orders.#``;
- ``RESILIENCE_TEST_SPANS``: a file where every finished OpenTelemetry span is appended,
  one JSON object a line (the SDK's exporter, per pool process);
- ``RESILIENCE_TEST_RETRIES``: a file where the traceback Celery stores in the result
  backend for each RETRY is appended (from the ``task_retry`` signal, which gets the
  very text ``mark_as_retry`` stored).
"""

from __future__ import annotations

import os
from typing import Any

import requests
import urllib3
from celery.signals import task_retry
from kombu import Exchange, Queue

from celery_resilience import PermanentError, TransientError, resilient_task
from tests.apps.inspect_app import app
from tests.apps.resilient import FAST, _call

__all__ = ["app", "fail_with", "order"]

_queue = app.conf.task_default_queue
if os.environ.get("RESILIENCE_TEST_TOPIC"):
    topic = Exchange(os.environ["RESILIENCE_TEST_TOPIC"], "topic", durable=False)
    app.conf.task_queues = [
        Queue(_queue, Exchange(_queue, "direct"), routing_key=_queue),
        Queue(f"{_queue}-topic", topic, routing_key="orders.#", durable=False, auto_delete=True),
    ]

if os.environ.get("RESILIENCE_TEST_SPANS"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    _provider = TracerProvider()
    _spans = open(os.environ["RESILIENCE_TEST_SPANS"], "a", encoding="utf-8")  # noqa: SIM115 - for the process's life
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=_spans, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    )
    trace.set_tracer_provider(_provider)


if os.environ.get("RESILIENCE_TEST_RETRIES"):

    @task_retry.connect(weak=False)
    def _keep_retry(request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
        with open(os.environ["RESILIENCE_TEST_RETRIES"], "a", encoding="utf-8") as out:
            out.write(f"{getattr(request, 'id', '?')} {reason!r}\n{einfo.traceback}\n")


def planted(secret: str, form: str) -> Exception:
    """An exception carrying ``secret`` the way ``form`` says."""
    url = f"https://api.example/v1/charges?page=2&api_key={secret}"
    if form == "ssl":  # requests' SSLError wrapping urllib3's MaxRetryError
        pool = urllib3.HTTPSConnectionPool("api.example", 443)
        reason = urllib3.exceptions.SSLError("certificate verify failed")
        inner = urllib3.exceptions.MaxRetryError(pool, f"/v1/charges?token={secret}", reason)
        return requests.exceptions.SSLError(inner)
    if form == "header":
        return PermanentError(f"rejected: request headers {{'Authorization': 'Bearer {secret}'}}")
    if form == "chained":  # a permanent error caused by one holding a header, caused by a URL
        inner = ConnectionError(f"GET {url} failed")
        middle = KeyError({"X-Api-Key": secret})
        middle.__cause__ = inner
        error = PermanentError("the upstream refused the charge")
        error.__cause__ = middle
        return error
    if form == "transient":
        return TransientError(f"upstream busy at {url}")
    raise ValueError(f"no such form {form!r}")


@resilient_task(app=app, bind=True, name="leak.fail", backoff=FAST, max_retries=1)
def fail_with(self: Any, form: str, api_key: str) -> None:
    """Fail with the secret ``api_key`` planted in the exception as ``form`` says."""
    raise planted(api_key, form)


@resilient_task(app=app, bind=True, name="leak.order", backoff=FAST, max_retries=0)
def order(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream once (a 404 fails it permanently: a dead letter)."""
    return _call(self, path, "GET", 5.0, None)
