"""The httpx clients, sync and async, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from celery_resilience.core.errors import DeadlineSpent
from celery_resilience.integration.budget import Budget, bind_budget
from celery_resilience.integration.http import idempotency_key
from celery_resilience.integration.httpx_clients import (
    DEFAULT_HTTPX_TIMEOUT,
    ResilientAsyncClient,
    ResilientClient,
)
from celery_resilience.observability.tracing import bind_attempt
from tests.unit.test_http import Recorder, attempt, server  # noqa: F401 - fixture

ALL_PARTS = ("connect", "read", "write", "pool")


class NotingTransport(httpx.HTTPTransport):
    """A real transport that notes the timeouts each request goes out with."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        return super().handle_request(request)


@pytest.fixture
def noting() -> NotingTransport:
    return NotingTransport()


@pytest.fixture
def client(noting: NotingTransport) -> Iterator[ResilientClient]:
    with ResilientClient(transport=noting) as c:
        yield c


def _budget(left: float, header: str | None = "X-Request-Timeout") -> Budget:
    return Budget(deadline=10.0, started=100.0, clock=lambda: 110.0 - left, header=header)


def test_attempt_headers_on_sync_calls(server: Recorder, client):  # noqa: F811
    info = attempt("task-9")
    with bind_attempt(info):
        client.post(server.url, json={})
        client.get(server.url)
        client.patch(server.url, json={})
    post, get, patch = (server.headers(i) for i in range(3))
    assert post["traceparent"] == get["traceparent"] == info.traceparent()
    assert post["idempotency-key"] == idempotency_key("task-9", 1)
    assert "idempotency-key" not in get
    assert patch["idempotency-key"] == idempotency_key("task-9", 2)


def test_nothing_added_outside_an_attempt(server: Recorder, client, noting):  # noqa: F811
    client.post(server.url, json={})
    assert "traceparent" not in server.headers()
    assert "idempotency-key" not in server.headers()
    assert noting.timeouts == [DEFAULT_HTTPX_TIMEOUT.as_dict()]


def test_none_parts_get_the_default(server: Recorder, client, noting):  # noqa: F811
    client.get(server.url, timeout=httpx.Timeout(7.0, read=None))
    assert noting.timeouts == [{"connect": 7.0, "read": 30.0, "write": 7.0, "pool": 7.0}]


def test_every_timeout_cut_to_what_is_left(server: Recorder, client, noting):  # noqa: F811
    with bind_budget(_budget(2.0)):
        client.get(server.url)
        client.get(server.url, timeout=1.5)
    assert noting.timeouts == [dict.fromkeys(ALL_PARTS, 2.0), dict.fromkeys(ALL_PARTS, 1.5)]
    assert server.headers(0)["x-request-timeout"] == "2.000"


def test_no_call_without_time(server: Recorder, client):  # noqa: F811
    with bind_budget(_budget(0.01)), pytest.raises(DeadlineSpent):
        client.get(server.url)
    assert server.seen == []


def test_no_cookie_kept(server: Recorder, client):  # noqa: F811
    client.cookies.extract_cookies(
        httpx.Response(
            200, headers={"set-cookie": "sid=x"}, request=httpx.Request("GET", server.url)
        )
    )
    assert not client.cookies


def test_async_client_in_an_attempt(server: Recorder):  # noqa: F811
    """asyncio.run inside the body: the coroutine sees the attempt and its budget."""
    info = attempt("task-a")

    async def calls() -> None:
        async with ResilientAsyncClient() as client:
            await client.post(server.url, json={})
            await client.get(server.url)

    with bind_attempt(info), bind_budget(_budget(3.0)):
        asyncio.run(calls())
    post, get = server.headers(0), server.headers(1)
    assert post["traceparent"] == info.traceparent()
    assert post["idempotency-key"] == idempotency_key("task-a", 1)
    assert float(get["x-request-timeout"]) == 3.0


def test_async_client_starts_no_call_without_time(server: Recorder):  # noqa: F811
    async def call() -> None:
        async with ResilientAsyncClient() as client:
            await client.get(server.url)

    with bind_budget(_budget(0.0)), pytest.raises(DeadlineSpent):
        asyncio.run(call())
    assert server.seen == []
