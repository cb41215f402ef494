"""The same tasks as :mod:`example_project.tasks`, written with plain Celery only.

This is the careful, usual way: ``autoretry_for`` on the transient exceptions of
``requests`` (and on ``HTTPError``, since ``raise_for_status`` is how a 503 surfaces),
exponential backoff with jitter, the same ``max_retries`` and Celery's ``rate_limit``
(which Celery enforces per worker node). The backoff is capped at 60 s, as
celery-resilience's default is, so that the two compare like with like.

The demo runs both sets on the same story against the same upstream; these call it under
``/baseline`` so that the upstream can count each set's calls apart.
"""

from __future__ import annotations

from typing import Any

import requests
from celery import Task

from example_project.app import BASELINE_QUEUE, UPSTREAM_URL, app

__all__ = ["charge_invoice", "fetch_rates", "sync_customer"]

API = f"{UPSTREAM_URL}/baseline"

RETRY_OPTIONS: dict[str, Any] = {
    "bind": True,
    "queue": BASELINE_QUEUE,
    "autoretry_for": (requests.ConnectionError, requests.Timeout, requests.HTTPError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}

_session = requests.Session()


@app.task(name="example.baseline.fetch_rates", **RETRY_OPTIONS)
def fetch_rates(self: Task[Any, Any], currency: str) -> dict[str, Any]:
    """Fetch today's exchange rates for ``currency``."""
    resp = _session.get(f"{API}/billing/rates/{currency}", timeout=5)
    resp.raise_for_status()
    return {"currency": currency, "rates": resp.json()}


@app.task(name="example.baseline.charge_invoice", **RETRY_OPTIONS)
def charge_invoice(self: Task[Any, Any], invoice_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge an invoice, with an Idempotency-Key made from the task ID by hand."""
    resp = _session.post(
        f"{API}/billing/invoices/{invoice_id}/charge",
        json={"amount_cents": amount_cents},
        headers={"Idempotency-Key": f"charge-{self.request.id}"},
        timeout=5,
    )
    resp.raise_for_status()
    return {"invoice_id": invoice_id, "charged": amount_cents}


@app.task(name="example.baseline.sync_customer", rate_limit="5/s", **RETRY_OPTIONS)
def sync_customer(self: Task[Any, Any], customer_id: str) -> dict[str, Any]:
    """Push one customer to the CRM (5/s per worker node: Celery's rate_limit)."""
    resp = _session.put(f"{API}/crm/customers/{customer_id}", json={"id": customer_id}, timeout=5)
    resp.raise_for_status()
    return {"customer_id": customer_id, "synced": True}
