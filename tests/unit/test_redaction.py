"""One redaction for every sink: secrets planted anywhere in an exception never come out.

The property tests build exceptions the way HTTP clients do (``requests``' ``SSLError``
wrapping a ``urllib3`` error, ``httpx`` status errors, ``OSError``), with secrets in URLs,
headers, nested exceptions, arguments of any type, attributes, notes and ``__cause__`` /
``__context__`` chains, then look for each secret in everything a sink gets from the
exception: ``str``, ``repr``, the traceback text, Celery's JSON form for a result backend,
the pickle-safe copy Celery makes, the ``task-failed`` event's fields and an OTel span.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
import traceback
from typing import Any

import httpx
import pytest
import requests
import urllib3
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.backends.base import BaseBackend
from celery.utils.saferepr import saferepr
from celery.utils.serialization import get_pickleable_exception
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celery_resilience.integration.flow import redacted
from celery_resilience.observability.otel import attempt_span
from celery_resilience.observability.redaction import (
    REDACTED,
    RedactedError,
    redact,
    redact_exception,
    redact_headers,
    redact_value,
)
from celery_resilience.observability.tracing import new_trace

GROUP: Any = getattr(builtins, "ExceptionGroup", None)

# --- planting secrets ---------------------------------------------------------------

SECRETS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~", min_size=6,
                  max_size=24).map(lambda s: f"Zq{s}9")  # fmt: skip
PARAMS = st.sampled_from(["api_key", "apikey", "token", "access_token", "password", "signature",
                          "client_secret", "X-Amz-Signature", "sig", "key", "auth"])  # fmt: skip
HEADERS = st.sampled_from(["Authorization", "proxy-authorization", "Cookie", "Set-Cookie",
                           "X-Api-Key", "x-auth-token", "Private-Token",
                           "X-Hub-Signature"])  # fmt: skip
SCHEMES = st.sampled_from(["https", "http", "redis", "rediss", "amqp"])


def _url(scheme: str, param: str, secret: str, *, userinfo: bool) -> str:
    if userinfo:
        return f"{scheme}://user:{secret}@api.example:8443/v1/charges?page=2"
    return f"{scheme}://api.example/v1/charges?page=2&{param}={secret}&x=1"


@st.composite
def planted_texts(draw: st.DrawFn, secret: str) -> str:
    """A message carrying ``secret`` in a URL, a header line or a dict/tuple repr."""
    param, header, scheme = draw(PARAMS), draw(HEADERS), draw(SCHEMES)
    forms = [
        f"GET {_url(scheme, param, secret, userinfo=False)} failed",
        f"cannot connect to {_url(scheme, param, secret, userinfo=True)}",
        f"request headers: {header}: Bearer {secret}",
        repr({header: f"Bearer {secret}", "Accept": "*/*"}),
        repr([(header, secret)]),
        json.dumps({"password": secret, "user": "bob"}),
    ]
    return draw(st.sampled_from(forms))


class UpstreamError(Exception):
    """A custom exception with state: its own attributes, and a __str__ reading them."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url)
        self.url = url
        self.headers = headers

    def __str__(self) -> str:
        return f"upstream said no to {self.url} (sent {self.headers})"


class Opaque:
    """An argument of no known kind whose repr carries the secret."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Opaque({self.text})"


def _leaf(kind: int, text: str, secret: str) -> BaseException:
    url = f"https://api.example/v1?api_key={secret}"
    if kind == 0:
        return ValueError(text)
    if kind == 1:  # what requests raises on a TLS failure: SSLError(MaxRetryError(...))
        pool = urllib3.HTTPSConnectionPool("api.example", 443)
        reason = urllib3.exceptions.SSLError(f"certificate verify failed for {text}")
        inner = urllib3.exceptions.MaxRetryError(pool, f"/v1?token={secret}", reason)
        return requests.exceptions.SSLError(inner, request=requests.Request("GET", url).prepare())
    if kind == 2:
        request = httpx.Request("GET", url, headers={"Authorization": f"Bearer {secret}"})
        response = httpx.Response(503, request=request)
        return httpx.HTTPStatusError(f"Server error for url '{url}'", request=request,
                                     response=response)  # fmt: skip
    if kind == 3:
        return OSError(111, text)
    if kind == 4:
        return KeyError({"Authorization": secret, "page": 2})
    if kind == 5:
        return UpstreamError(url, {"X-Api-Key": secret})
    if kind == 6:
        return RuntimeError(Opaque(text), text.encode(), {"nested": [text]})
    return TimeoutError(f"read timed out ({text})")


@st.composite
def planted_exceptions(draw: st.DrawFn) -> tuple[BaseException, list[str]]:
    """An exception tree (nested args, cause, context, notes, groups) and its secrets."""
    secrets: list[str] = []

    def build(depth: int) -> BaseException:
        secret = draw(SECRETS)
        secrets.append(secret)
        exc = _leaf(draw(st.integers(0, 7)), draw(planted_texts(secret)), secret)
        if depth < 3 and draw(st.booleans()):
            exc.__cause__ = build(depth + 1)
        if depth < 3 and draw(st.booleans()):
            exc.__context__ = build(depth + 1)
        if depth < 2 and draw(st.booleans()):
            exc = RuntimeError("wrapped", build(depth + 1), exc)
        if GROUP is not None and depth < 2 and draw(st.booleans()):
            exc = GROUP("several", [exc, build(depth + 1)])
        if hasattr(exc, "add_note") and draw(st.booleans()):
            note = draw(SECRETS)
            secrets.append(note)
            exc.add_note(f"while calling https://api.example/?access_token={note}")
        return exc

    return build(0), secrets


def _raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a task body would raise it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


_BACKEND = BaseBackend(Celery("redaction", set_as_current=False), serializer="json")


def sinks(exc: BaseException) -> dict[str, str]:
    """Everything Celery and this package send anywhere about ``exc``, as text."""
    safe = get_pickleable_exception(exc)  # type: ignore[arg-type]
    einfo = ExceptionInfo((type(safe), safe, exc.__traceback__))
    return {
        "str": str(exc),
        "repr": repr(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "backend json": json.dumps(_BACKEND.prepare_exception(exc, "json"), default=repr),  # type: ignore[arg-type]
        "pickle-safe copy": repr(safe) + repr(safe.args),
        "einfo traceback": einfo.traceback or "",
        "task-failed event": saferepr(safe),
    }


def assert_clean(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {where}:\n{text}"


# --- the property tests -------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_exceptions())
def test_no_planted_secret_survives_in_any_form_of_an_exception(
    planted: tuple[BaseException, list[str]],
) -> None:
    exc, secrets = planted
    assert_clean(sinks(redact_exception(_raised(exc))), secrets)


@settings(max_examples=200, deadline=None)
@given(planted_exceptions())
def test_the_attempt_path_redacts_the_same_way(planted: tuple[BaseException, list[str]]) -> None:
    """``redacted()``, which the attempt path raises, delegates to the one redactor."""
    exc, secrets = planted
    assert_clean(sinks(redacted(_raised(exc))), secrets)


@settings(max_examples=300, deadline=None)
@given(SECRETS.flatmap(lambda s: st.tuples(st.just(s), planted_texts(s))))
def test_text_redaction_hides_every_planted_form(pair: tuple[str, str]) -> None:
    secret, text = pair
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned
    assert redact(cleaned) == cleaned


@settings(max_examples=200, deadline=None)
@given(SECRETS, HEADERS, st.sampled_from([str, bytes]))
def test_values_under_secret_names_are_hidden_at_any_depth(
    secret: str, header: str, kind: type[Any]
) -> None:
    value = kind(secret.encode()) if kind is bytes else secret
    tree = {
        "args": [1, {"headers": {header: value, "Accept": "*/*"}}],
        "note": (f"?token={secret}",),
    }
    cleaned = redact_value(tree)
    assert secret not in repr(cleaned)
    assert cleaned["args"][0] == 1
    assert cleaned["args"][1]["headers"]["Accept"] == "*/*"
    assert redact_headers({header: value}) == {header: REDACTED}


_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@settings(max_examples=100, deadline=None)
@given(planted_exceptions())
def test_spans_recording_a_planted_exception_carry_no_secret(
    planted: tuple[BaseException, list[str]],
) -> None:
    """An attempt's span (the SDK's in-memory exporter) records the failure redacted,
    whether or not the exception was redacted before."""
    exc, secrets = planted
    _EXPORTER.clear()
    with (
        contextlib.suppress(Exception),
        attempt_span("t", new_trace(), tracer_provider=_PROVIDER),
    ):
        raise exc
    (span,) = _EXPORTER.get_finished_spans()
    assert_clean({"span": span.to_json()}, secrets)


# --- examples -----------------------------------------------------------------------


def test_a_mapping_in_a_repr_of_a_repr_is_redacted() -> None:
    """Escaped quotes (an exception's repr inside another's) hide nothing."""
    text = repr(repr(repr({"Authorization": "Bearer esc-SECRET", "token": "t-SECRET"})))
    assert "SECRET" not in redact(text)


def test_requests_ssl_error_wrapping_a_urllib3_error() -> None:
    """The issue's case: the key sits in the urllib3 error inside the requests error."""
    exc = _raised(_leaf(1, "x", "k3y-SECRET"))
    out = redact_exception(exc)
    assert out is exc
    assert isinstance(out, requests.exceptions.SSLError)
    assert "k3y-SECRET" not in repr(out)
    assert "token=***" in repr(out)


def test_a_chained_exception_in_the_traceback_text() -> None:
    url = "https://h/?api_key=" + "first-SECRET"  # not on the raising line's source
    try:
        try:
            raise ConnectionError(f"GET {url}")
        except ConnectionError as inner:
            raise ValueError("bad answer") from inner
    except ValueError as exc:
        text = "".join(traceback.format_exception(redact_exception(exc)))
    assert "first-SECRET" not in text
    assert "api_key=***" in text
    assert "ValueError: bad answer" in text


def test_an_exception_whose_text_cannot_be_rewritten_is_replaced() -> None:
    """A __str__ reading state that is not a string attribute: a stand-in, same traceback."""

    class StubbornError(Exception):
        def __str__(self) -> str:
            return "GET https://h/?api_key=" + "stubborn" + "-SECRET"

    exc = _raised(StubbornError())
    out = redact_exception(exc)
    assert isinstance(out, RedactedError)
    assert str(out).endswith("StubbornError: GET https://h/?api_key=***")
    assert out.__traceback__ is exc.__traceback__


def test_cycles_and_deep_chains_end() -> None:
    a, b = ValueError("?token=a-SECRET"), ValueError("?token=b-SECRET")
    a.__context__, b.__context__ = b, a
    out = redact_exception(a)
    assert "SECRET" not in repr(out) + repr(out.__context__)
    deep: BaseException = ValueError("root")
    for i in range(100):
        deep = ValueError(f"level {i}", deep)
    redact_exception(deep)


def test_values_without_secrets_come_back_unchanged() -> None:
    value = {"a": [1, 2.5, None, ("x", b"y")], "b": Opaque("plain")}
    assert redact_value(value) is value
    exc = ValueError("nothing here", 3)
    assert redact_exception(exc) is exc
    assert exc.args == ("nothing here", 3)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="notes need 3.11")
def test_notes_are_redacted() -> None:
    exc: Any = ValueError("x")
    exc.add_note("see https://h/?password=" + "n0te-SECRET")
    assert "n0te-SECRET" not in "".join(traceback.format_exception(redact_exception(exc)))


def test_argument_reprs_of_resilient_tasks_are_redacted_at_publish_and_receipt() -> None:
    """Flower shows ``argsrepr``/``kwargsrepr``: the publish hook redacts them for a
    resilient task, and the worker's receipt hook for a message published without it."""
    from types import SimpleNamespace  # noqa: PLC0415

    from celery_resilience import resilient_task  # noqa: PLC0415
    from celery_resilience.integration import hooks  # noqa: PLC0415

    app = Celery("reprs", broker="memory://", set_as_current=False)

    @resilient_task(app=app, name="reprs.charge", shared=False)
    def charge(api_key: str) -> None:
        """A resilient task taking a credential by name."""

    assert "reprs.charge" in app.tasks  # bound, as when the app publishes
    headers = {"argsrepr": "()", "kwargsrepr": "{'api_key': 'pub-SECRET'}"}
    hooks._on_publish(sender="reprs.charge", headers=headers)
    assert headers["kwargsrepr"] == "{'api_key': '***'}"
    other = {"kwargsrepr": "{'api_key': 'plain-SECRET'}"}
    hooks._on_publish(sender="some.plain_task", headers=other)
    assert other["kwargsrepr"] == "{'api_key': 'plain-SECRET'}"  # not ours to change

    request = SimpleNamespace(name="reprs.charge", _argsrepr="('https://h/?token=rcv-SECRET',)",
                              _kwargsrepr="{}")  # fmt: skip
    hooks._on_received(request=request)
    assert request._argsrepr == "('https://h/?token=***',)"
