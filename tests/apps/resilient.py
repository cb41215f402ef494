"""Resilient tasks against the upstream, configured from the environment.

Besides the variables of :mod:`tests.helpers.celery_apps`: ``RESILIENCE_TEST_STATE`` (the
state store's URL; default: the broker's when it is Redis), ``RESILIENCE_TEST_PREFIX``
(the key prefix, so each test's breakers and limiters are its own),
``RESILIENCE_TEST_FALLBACK`` (``resilience_fallback``),
``RESILIENCE_TEST_DEADLINE_HEADER`` (``resilience_deadline_header``) and
``RESILIENCE_TEST_TRANSITIONS`` (a Redis list on the result backend where every
``breaker_state_changed`` this process sends is appended, for tests to count).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis
import requests
import tenacity

from celery_resilience import (
    CircuitBreaker,
    ConcurrencyLimit,
    RateLimit,
    resilient_task,
    signals,
)
from celery_resilience.integration.budget import current_budget
from celery_resilience.integration.http import ResilientSession
from celery_resilience.integration.httpx_clients import ResilientAsyncClient, ResilientClient
from tests.helpers.celery_apps import ENV_BACKEND, ENV_UPSTREAM, app_from_env

app = app_from_env("resilient")
app.conf.update(
    resilience_backend_url=os.environ.get("RESILIENCE_TEST_STATE") or None,
    resilience_key_prefix=os.environ.get("RESILIENCE_TEST_PREFIX") or "resilience",
    task_acks_late=os.environ.get("RESILIENCE_TEST_ACKS_LATE") == "1",
    resilience_fallback=os.environ.get("RESILIENCE_TEST_FALLBACK") or "allow",
    resilience_duplicate_guard=os.environ.get("RESILIENCE_TEST_GUARD") or "acks_late",
    resilience_park_after=float(os.environ.get("RESILIENCE_TEST_PARK_AFTER") or 5.0),
    resilience_park_poll=float(os.environ.get("RESILIENCE_TEST_PARK_POLL") or 1.0),
    resilience_deadline_header=os.environ.get("RESILIENCE_TEST_DEADLINE_HEADER") or None,
)
if os.environ.get("RESILIENCE_TEST_VISIBILITY"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["RESILIENCE_TEST_VISIBILITY"])
    }

#: Quick backoff for tests: full jitter, 0.25 s base, 2 s cap.
FAST = tenacity.wait_random_exponential(multiplier=0.25, max=2)


_signal_clients: dict[int, redis.Redis] = {}


@signals.breaker_state_changed.connect
def _note_transition(sender: Any, name: str, old: Any, new: Any, **_: Any) -> None:
    """Append ``{pid, name, old, new}`` to the list ``RESILIENCE_TEST_TRANSITIONS`` names."""
    key = os.environ.get("RESILIENCE_TEST_TRANSITIONS")
    if not key:
        return
    client = _signal_clients.get(os.getpid())
    if client is None:
        client = _signal_clients[os.getpid()] = redis.Redis.from_url(os.environ[ENV_BACKEND])
    entry = {"pid": os.getpid(), "name": name, "old": old.value, "new": new.value}
    if _.get("key") is not None:
        entry["key"] = _["key"]
    client.rpush(key, json.dumps(entry))


def _call(task: Any, path: str, method: str, timeout: float, base: str | None) -> dict[str, Any]:
    url = (base or os.environ[ENV_UPSTREAM]) + path
    resp = task.http.request(method, url, timeout=timeout)
    resp.raise_for_status()
    return {"status": resp.status_code, "ledger": (task.request.headers or {}).get("resilience")}


@resilient_task(app=app, bind=True, name="res.call", backoff=FAST)
def call(
    self: Any, path: str, method: str = "GET", timeout: float = 5.0, base: str | None = None
) -> dict[str, Any]:
    """Call the upstream; defaults: max_retries=5."""
    return _call(self, path, method, timeout, base)


@resilient_task(app=app, bind=True, name="res.call3", backoff=FAST, max_retries=3)
def call3(self: Any, path: str, method: str = "GET") -> dict[str, Any]:
    """Call the upstream; max_retries=3."""
    return _call(self, path, method, 5.0, None)


@resilient_task(
    app=app, bind=True, name="res.slow_backoff", max_retries=2, backoff=tenacity.wait_fixed(3)
)
def slow_backoff(self: Any, path: str, base: str | None = None) -> dict[str, Any]:
    """Call the upstream (or ``base``); a fixed 3 s countdown between attempts."""
    return _call(self, path, "GET", 5.0, base)


@resilient_task(
    app=app,
    bind=True,
    name="res.guarded",
    backoff=FAST,
    max_retries=8,
    breaker=CircuitBreaker("upstream", minimum_calls=5, open_for=2.0),
)
def guarded(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'upstream'."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.steady",
    max_retries=0,
    # the plain share rule and no throttling: its test counts outcomes to the call
    breaker=CircuitBreaker(
        "steady", minimum_calls=5, window=10.0, open_for=30.0, confidence=0.5, throttle=None
    ),
)
def steady(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'steady' (10 s window); no retry."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.degraded",
    backoff=FAST,
    max_retries=8,
    breaker=CircuitBreaker("degraded"),
)
def degraded(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind a breaker with every default ('degraded')."""
    return _call(self, path, "GET", 5.0, None)


#: Never opens (its test counts retries, not outages); retries may add 25 % to the first
#: attempts of its 4 s window, or 1 a second.
RETRY_BUDGETED = CircuitBreaker(
    "retry_budget", window=4.0, minimum_calls=10_000, throttle=None, retry_budget=0.25
)


@resilient_task(
    app=app, bind=True, name="res.retry_budget", backoff=FAST, max_retries=1, breaker=RETRY_BUDGETED
)
def retry_budgeted(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream behind the breaker 'retry_budget' (a retry budget of 25 %); one retry."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.retry_budget_strict",
    backoff=FAST,
    max_retries=3,
    breaker=CircuitBreaker(
        "retry_budget_strict",
        minimum_calls=10_000,
        throttle=None,
        retry_budget=0.1,
        retry_floor=0.1,
        retry_exhausted="give_up",
    ),
)
def retry_budget_strict(self: Any, path: str) -> dict[str, Any]:
    """Like res.retry_budget, but a retry beyond its budget (10 %, floor 0.1/s) gives up."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app, bind=True, name="res.limited", backoff=FAST, limiter=RateLimit("api", "10/s")
)
def limited(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream through the rate limit 'api' (10/s)."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app, bind=True, name="res.paced", backoff=FAST, limiter=RateLimit("paced", "0.125/s")
)
def paced(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream through the rate limit 'paced': one call every 8 s, further apart
    than a worker holds a message for its slot (5 s), so a second task is deferred."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.pooled",
    backoff=FAST,
    concurrency=ConcurrencyLimit("api", 3, lease=5.0),
)
def pooled(self: Any, path: str) -> dict[str, Any]:
    """Call the upstream holding one of 3 slots of 'api'."""
    return _call(self, path, "GET", 10.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.manual",
    backoff=FAST,
    max_retries=0,
    breaker=CircuitBreaker("manual", open_for=0.5),
)
def manual(self: Any, path: str) -> dict[str, Any]:
    """Behind the breaker 'manual' (tests force it open); not a single retry allowed."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.manual_deadline",
    backoff=FAST,
    deadline=3.0,
    breaker=CircuitBreaker("manual-deadline", open_for=0.5),
)
def manual_deadline(self: Any, path: str) -> dict[str, Any]:
    """Behind the breaker 'manual-deadline' (tests force it open); a 3 s deadline."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.both",
    backoff=FAST,
    breaker=CircuitBreaker("both"),
    limiter=RateLimit("both", "100/s"),
)
def both(self: Any, path: str) -> dict[str, Any]:
    """Behind the breaker 'both' and through the rate limit 'both' (100/s)."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    name="res.busy",
    breaker=CircuitBreaker("busy"),
    limiter=RateLimit("busy", "100000/s", burst=1000),
)
def busy(n: int) -> int:
    """Return ``n`` at once, behind the breaker 'busy' and a limit far above the load."""
    return n


@resilient_task(
    app=app,
    bind=True,
    name="res.solo",
    backoff=FAST,
    concurrency=ConcurrencyLimit("solo", 1, lease=3.0),
)
def solo(self: Any, path: str) -> dict[str, Any]:
    """Hold the only slot of 'solo' (3 s lease); the call names this process (``?pid=``)."""
    return _call(self, f"{path}?pid={os.getpid()}", "GET", 30.0, None)


@resilient_task(app=app, bind=True, name="res.requeues_itself", backoff=FAST)
def requeues_itself(self: Any, path: str) -> dict[str, Any]:
    """Re-queue itself once with ``self.retry`` (as a task body may), then call the upstream."""
    if not (self.request.headers or {}).get("requeued"):
        headers = {**(self.request.headers or {}), "requeued": "yes"}
        raise self.retry(countdown=0.1, headers=headers)
    return _call(self, path, "GET", 5.0, None)


@resilient_task(app=app, bind=True, name="res.rejects_once", backoff=FAST)
def rejects_once(self: Any, path: str) -> dict[str, Any]:
    """Put its own message back once (Reject with requeue), then succeed."""
    resp = self.http.get(os.environ[ENV_UPSTREAM] + path, timeout=5)
    if resp.json()["n"] == 1:
        from celery.exceptions import Reject  # noqa: PLC0415

        raise Reject("not yet", requeue=True)
    return {"status": resp.status_code, "ledger": None}


@resilient_task(
    app=app,
    bind=True,
    name="res.limited_deadline",
    backoff=FAST,
    deadline=5.0,
    limiter=RateLimit("late", "1/s"),
)
def limited_deadline(self: Any, path: str) -> dict[str, Any]:
    """Through the rate limit 'late' (1/s), with a 5 s deadline."""
    return _call(self, path, "GET", 5.0, None)


def _raising_backoff(state: tenacity.RetryCallState) -> float:
    """A backoff strategy with a bug in it."""
    raise ZeroDivisionError("a bug in the task's own backoff")


@resilient_task(
    app=app,
    bind=True,
    name="res.bad_backoff",
    backoff=_raising_backoff,
    concurrency=ConcurrencyLimit("bad-backoff", 1, lease=60.0),
)
def bad_backoff(self: Any, path: str) -> dict[str, Any]:
    """Holds the only slot of 'bad-backoff'; its backoff raises."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.long_outage",
    backoff=FAST,
    max_retries=8,
    breaker=CircuitBreaker("long-outage", minimum_calls=3, open_for=8.0),
)
def long_outage(self: Any, path: str) -> dict[str, Any]:
    """Behind the breaker 'long-outage', which stays open 8 s (its waits are parked)."""
    return _call(self, path, "GET", 5.0, None)


class _NotingAdapter(requests.adapters.HTTPAdapter):
    """A real transport that notes the timeout each request is sent with."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, **kwargs)


@resilient_task(app=app, bind=True, name="res.budgeted", backoff=FAST, deadline=10.0)
def budgeted(self: Any, path: str, spend_to: float | None = None) -> dict[str, Any]:
    """A 10 s deadline. Waits (polling) until at most ``spend_to`` seconds are left, then
    calls the upstream with the default timeout (3.05 s to connect, 30 s to read) through a
    :class:`ResilientSession` whose transport notes the timeout actually sent; returns
    those timeouts."""
    budget = current_budget()
    if spend_to is not None and budget is not None:
        while budget.left() > spend_to:
            time.sleep(0.01)
    noting = _NotingAdapter()
    with ResilientSession() as session:
        session.mount("http://", noting)
        resp = session.get(os.environ[ENV_UPSTREAM] + path)
    resp.raise_for_status()
    return {"timeouts": noting.timeouts}


async def _httpx_async(method: str, url: str) -> int:
    async with ResilientAsyncClient() as client:
        resp = await client.request(method, url, json={} if method == "POST" else None)
        resp.raise_for_status()
        return resp.status_code


@resilient_task(app=app, bind=True, name="res.via_httpx", backoff=FAST, deadline=10.0)
def via_httpx(self: Any, path: str, method: str = "GET", kind: str = "sync") -> int:
    """Call the upstream through httpx (``kind``: "sync" or "async"); a 10 s deadline."""
    url = os.environ[ENV_UPSTREAM] + path
    if kind == "async":
        return asyncio.run(_httpx_async(method, url))
    with ResilientClient() as client:
        resp = client.request(method, url, json={} if method == "POST" else None)
        resp.raise_for_status()
        return resp.status_code


def _tenant(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    return kwargs["tenant"]


@resilient_task(
    app=app,
    bind=True,
    name="res.per_tenant",
    backoff=FAST,
    max_retries=1,
    breaker=CircuitBreaker("tenants", key=_tenant, minimum_calls=3, open_for=60.0),
)
def per_tenant(self: Any, path: str, *, tenant: str) -> dict[str, Any]:
    """Call the upstream behind one breaker per tenant ('tenants', keyed by ``tenant``)."""
    return _call(self, path, "GET", 5.0, None)


@resilient_task(
    app=app,
    bind=True,
    name="res.fair",
    backoff=FAST,
    limiter=RateLimit("fair", "10/s", key=_tenant),
)
def fair(self: Any, path: str, *, tenant: str) -> dict[str, Any]:
    """Call the upstream through one 10/s rate limit per tenant ('fair', keyed)."""
    return _call(self, path, "GET", 5.0, None)
