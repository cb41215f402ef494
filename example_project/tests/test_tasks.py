"""What the example's tasks decide when the billing API or the CRM misbehave.

Every test runs the tasks eagerly (``resilience_app``), against a real local HTTP server
(``upstream``), and asserts on the decisions the attempts made (``resilience_attempts``).
"""

from __future__ import annotations

import pytest

from celery_resilience import GaveUp
from celery_resilience.testing import Attempts
from example_project.tasks import charge_invoice, fetch_rates, sync_customer
from example_project.upstream import Response, Upstream

pytestmark = pytest.mark.usefixtures("resilience_app")


def test_a_charge_is_retried_twice_then_succeeds_with_one_idempotency_key(
    upstream: Upstream, resilience_attempts: Attempts
) -> None:
    upstream.script("/billing/invoices", [503, Response.connection_reset()])
    assert charge_invoice.delay("inv-1", 1250).get() == {"invoice_id": "inv-1", "charged": 1250}
    resilience_attempts.assert_retried(2, then="succeeded")
    resilience_attempts.assert_ledger("transient: HTTP 503", "transient: ")
    keys = {request.header("Idempotency-Key") for request in upstream.requests("/billing/invoices")}
    assert len(keys) == 1
    assert None not in keys


def test_an_unknown_currency_fails_at_once(
    upstream: Upstream, resilience_attempts: Attempts
) -> None:
    upstream.script("/billing/rates", [404])
    with pytest.raises(Exception, match="404"):
        fetch_rates.delay("XXX")
    resilience_attempts.assert_decisions("failed")
    assert resilience_attempts[0].verdict == "permanent"
    assert upstream.count("/billing/rates") == 1


def test_a_charge_waits_while_billing_is_down_then_goes_through(
    upstream: Upstream, resilience_attempts: Attempts
) -> None:
    """Five failed rate fetches open the ``billing`` breaker: a charge is deferred by it,
    spends no retry, and goes through as the probe once the breaker half-opens."""
    upstream.script("/billing/rates", [503] * 5)
    rates = resilience_attempts.step(fetch_rates, "EUR")
    for _ in range(5):
        rates.next()
    assert resilience_attempts.of(rates.task_id).decisions == ["retried"] * 5

    charge = resilience_attempts.step(charge_invoice, "inv-2", 990)
    deferral = charge.next()
    assert (deferral.decision, deferral.gate, deferral.name) == ("deferred", "breaker", "billing")
    assert upstream.count("/billing/invoices") == 0
    charge.run_to_end()
    assert charge.result == {"invoice_id": "inv-2", "charged": 990}
    resilience_attempts.of(charge.task_id).assert_decisions("deferred", "succeeded")


def test_a_429_pauses_the_crm_sync_for_at_least_retry_after(
    upstream: Upstream, resilience_attempts: Attempts
) -> None:
    upstream.script("/crm", [Response(429, retry_after=7)])
    assert sync_customer.delay("c-9").get() == {"customer_id": "c-9", "synced": True}
    first = resilience_attempts[0]
    assert (first.decision, first.verdict) == ("retried", "rate_limited")
    assert first.countdown is not None
    assert first.countdown >= 7.0


def test_billing_down_for_good_gives_up_after_the_policys_retries(
    upstream: Upstream, resilience_attempts: Attempts
) -> None:
    upstream.script("/billing", [], then=503)
    with pytest.raises(GaveUp):
        charge_invoice.delay("inv-3", 100)
    resilience_attempts.assert_gave_up("retries exhausted (max_retries=8)")
