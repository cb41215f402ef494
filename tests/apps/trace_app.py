"""Tasks for the tracing tests, configured from the environment (see tests.apps.resilient)."""

from __future__ import annotations

import logging
import os
from typing import Any

import tenacity

from celery_resilience import resilient_task
from tests.helpers.celery_apps import ENV_UPSTREAM, app_from_env

app = app_from_env("tracing")
app.conf.update(
    resilience_backend_url=os.environ.get("RESILIENCE_TEST_STATE") or None,
    resilience_key_prefix=os.environ.get("RESILIENCE_TEST_PREFIX") or "resilience",
)
log = logging.getLogger("tests.trace_app")
QUICK = tenacity.wait_fixed(0.2)
SECRET = "Bearer s3cr3t-T0KEN"


@resilient_task(app=app, bind=True, name="tr.charge", backoff=QUICK)
def charge(self: Any, path: str) -> int:
    """POST twice per attempt (charge, then receipt) with secrets in the headers."""
    log.info("charging %s", path)
    base = os.environ[ENV_UPSTREAM]
    headers = {"Authorization": SECRET, "Cookie": "session=c00kie-SECRET"}
    self.http.post(base + path + "/receipt", json={"path": path}, headers=headers)
    resp = self.http.post(base + path, json={"path": path}, headers=headers)
    log.info("charged %s: %s with %s", path, resp.status_code, headers)
    resp.raise_for_status()
    return resp.status_code


@resilient_task(app=app, bind=True, name="tr.parent")
def parent(self: Any) -> str:
    """Publish a child task from inside an attempt; return the child's id."""
    return child.apply_async().id


@resilient_task(app=app, bind=True, name="tr.child")
def child(self: Any) -> str | None:
    """Return the traceparent this child received."""
    return (self.request.headers or {}).get("traceparent")


@resilient_task(app=app, bind=True, name="tr.echo")
def echo(self: Any) -> str:
    """Return the trace id this attempt runs under (after any repair of the header)."""
    from celery_resilience.observability.tracing import current_attempt  # noqa: PLC0415

    info = current_attempt()
    return info.trace_id if info is not None else ""


@resilient_task(app=app, bind=True, name="tr.ignored")
def ignored(self: Any) -> None:
    """Log a line, then end as Celery's IGNORED (a state for which Celery calls neither
    ``on_success`` nor ``after_return``)."""
    from celery.exceptions import Ignore  # noqa: PLC0415

    log.info("ignoring myself")
    raise Ignore()


@app.task(name="tr.untraced")
def untraced() -> str:
    """A task of Celery's own: log a line; return the trace ID of the attempt current in
    it ("" for none)."""
    from celery_resilience.observability.tracing import current_attempt  # noqa: PLC0415

    log.info("untraced work")
    info = current_attempt()
    return info.trace_id if info is not None else ""
