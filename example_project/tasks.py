"""Tasks that call two flaky HTTP APIs, made resilient with celery-resilience.

The billing API serves exchange rates (an idempotent GET) and charges invoices (a POST:
``self.http`` sends an ``Idempotency-Key`` that is the same on every retry, so the API
charges once). Both tasks follow the named policy ``billing`` (declared in
:mod:`example_project.app`, changeable at run time with ``resilience policy set``), so they
share its circuit breaker: when billing is down, every worker stops calling it after a few
failures, and a probe or two find out when it is back. The CRM sync is rate-limited across
the whole cluster, and a ``429 Too Many Requests`` pauses that limit for every worker for
as long as ``Retry-After`` says.

Failures sort themselves: a timeout, a reset or a 503 is retried (without blocking a
worker); a 400 or 404 fails at once; a task whose breaker is open, or whose rate limit has
no room, is deferred, which spends none of its retries.
"""

from __future__ import annotations

from typing import Any

from celery_resilience import CircuitBreaker, RateLimit, ResilientTask, resilient_task
from example_project.app import UPSTREAM_URL, app

__all__ = ["BILLING", "CRM", "CRM_RATE", "SyncCustomer", "charge_invoice", "fetch_rates",
           "sync_customer"]

BILLING = CircuitBreaker("billing")
"""The billing API's breaker, as the policy ``billing`` declares it (the monitor reads it)."""
CRM = CircuitBreaker("crm")
"""The CRM's breaker."""
CRM_RATE = RateLimit("crm", "5/s")
"""The CRM allows 5 calls a second for the whole cluster, however many workers run."""


@resilient_task(app=app, bind=True, name="example.fetch_rates", policy="billing")
def fetch_rates(self: ResilientTask, currency: str) -> dict[str, Any]:
    """Fetch today's exchange rates for ``currency`` (an idempotent GET)."""
    resp = self.http.get(f"{UPSTREAM_URL}/billing/rates/{currency}", timeout=5)
    resp.raise_for_status()
    return {"currency": currency, "rates": resp.json()}


@resilient_task(app=app, bind=True, name="example.charge_invoice", policy="billing")
def charge_invoice(self: ResilientTask, invoice_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge an invoice; the API sees one Idempotency-Key however often this is retried."""
    resp = self.http.post(
        f"{UPSTREAM_URL}/billing/invoices/{invoice_id}/charge",
        json={"amount_cents": amount_cents},
        timeout=5,
    )
    resp.raise_for_status()
    return {"invoice_id": invoice_id, "charged": amount_cents}


class SyncCustomer(ResilientTask):
    """Push one customer to the CRM, at most 5 calls a second across the cluster."""

    name = "example.sync_customer"
    breaker = CRM
    limiter = CRM_RATE
    max_retries = 8

    def run(self, customer_id: str) -> dict[str, Any]:
        """PUT the customer (idempotent, so no Idempotency-Key is needed)."""
        resp = self.http.put(
            f"{UPSTREAM_URL}/crm/customers/{customer_id}", json={"id": customer_id}, timeout=5
        )
        resp.raise_for_status()
        return {"customer_id": customer_id, "synced": True}


sync_customer = app.register_task(SyncCustomer())
