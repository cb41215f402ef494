"""Outbound calls through httpx, sync and async: what ``self.http`` does for ``requests``.

Needs the ``httpx`` extra (``pip install "celery-resilience[httpx]"``). Inside an attempt,
every request of a :class:`ResilientClient` or :class:`ResilientAsyncClient` carries the
attempt's ``traceparent``, every POST or PATCH an ``Idempotency-Key`` that is the same on
each retry of the task (positions are shared with ``self.http``: the n-th keyed call of an
attempt, whichever client made it), and in a task with a ``deadline`` each timeout
(connect, read, write, pool) is cut to what is left of it, a call with too little left is
not started (:class:`~celery_resilience.core.errors.DeadlineSpent`) and the
``resilience_deadline_header``, when set, is sent::

    async def fetch(urls):
        async with ResilientAsyncClient() as client:
            return [(await client.get(u)).raise_for_status().json() for u in urls]

    @resilient_task(bind=True, deadline=60)
    def crawl(self, urls):
        return asyncio.run(fetch(urls))   # the attempt's context goes with the coroutine

httpx's exceptions and ``raise_for_status()`` errors are classified like ``requests``'s
(see :mod:`celery_resilience.core.classify`). A part of the timeout given as ``None``
gets the client's default, as ``self.http`` does: a task never waits forever. Like
``self.http``, the clients keep no cookie a response sets.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from celery_resilience.core.budget import cap_seconds
from celery_resilience.integration.http import DEFAULT_TIMEOUT, _NoCookies, prepare_call

__all__ = ["DEFAULT_HTTPX_TIMEOUT", "ResilientAsyncClient", "ResilientClient"]

DEFAULT_HTTPX_TIMEOUT: Final = httpx.Timeout(DEFAULT_TIMEOUT[1], connect=DEFAULT_TIMEOUT[0])
"""3.05 s to connect, 30 s for each read, write and pool wait: ``self.http``'s default."""


def _fit(request: httpx.Request, default: httpx.Timeout) -> None:
    """Add the attempt's headers to ``request`` and cut its timeouts to the deadline."""
    left = prepare_call(request.method, request.headers)
    fallback = default.as_dict()
    given = request.extensions.get("timeout") or fallback
    parts = {name: given.get(name, fallback[name]) for name in fallback}
    parts = {name: fallback[name] if value is None else value for name, value in parts.items()}
    if left is not None:
        parts = {name: cap_seconds(value, left) for name, value in parts.items()}
    request.extensions = {**request.extensions, "timeout": parts}


class ResilientClient(httpx.Client):
    """An ``httpx.Client`` for task code: timeouts and attempt headers by default.

    Default timeout `DEFAULT_HTTPX_TIMEOUT` (3.05 s to connect, 30 s otherwise); `send`
    (and so `get`, `post`...) adds the attempt's headers (`traceparent`, on POST and PATCH
    an `Idempotency-Key` stable across retries, the budget header) and cuts every part of
    the timeout to what is left of the task's deadline, raising `DeadlineSpent` rather
    than start a call without time for it. It keeps no cookie a response sets.
    """

    def __init__(self, *, timeout: Any = DEFAULT_HTTPX_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.cookies.jar.set_policy(_NoCookies())

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request`` with the attempt's headers, within the deadline."""
        _fit(request, self.timeout)
        return super().send(request, **kwargs)


class ResilientAsyncClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that does what `ResilientClient` does. Run it in the
    attempt's context (`asyncio.run` inside the task body copies it)."""

    def __init__(self, *, timeout: Any = DEFAULT_HTTPX_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.cookies.jar.set_policy(_NoCookies())

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request`` with the attempt's headers, within the deadline."""
        _fit(request, self.timeout)
        return await super().send(request, **kwargs)
