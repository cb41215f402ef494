"""Specification of celery_resilience.core.classify: verdicts, facts and Retry-After parsing.

Exceptions are real: raised by requests, httpx, urllib3 and sockets against servers on
127.0.0.1 (bounded timeouts), or by ``raise_for_status()`` on real response objects.
"""

from __future__ import annotations

import ast
import contextlib
import email.utils
import errno
import http.client
import math
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import urllib3
from celery.exceptions import SoftTimeLimitExceeded
from hypothesis import given
from hypothesis import strategies as st
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from celery_resilience.core.classify import (
    MAX_RETRY_AFTER,
    TRANSIENT_STATUSES,
    Failure,
    Verdict,
    classify,
    parse_retry_after,
    status_verdict,
)
from celery_resilience.core.errors import MAX_TASK_RETRY_AFTER, PermanentError, TransientError

T, P, R = Verdict.TRANSIENT, Verdict.PERMANENT, Verdict.RATE_LIMITED
NOW = 1_700_000_000.0
SECRET_PATH = "/v1/charges/SECRET-42?api_key=SECRET&card=SECRET"
URL = f"https://user:SECRET@api.example.com{SECRET_PATH}"
LOCAL = r"127\.0\.0\.1:\d+"
API = "api.example.com"


# -- local servers --------------------------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port whose connections complete (kernel backlog) but are never answered."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield int(server.getsockname()[1])


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A port whose connections, once they sent something, are given to ``handle``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


def hang_up(conn: socket.socket) -> None:
    """Close without a word (a TLS client sees its handshake cut short)."""


def answer_in_plain_http(conn: socket.socket) -> None:
    """Answer in clear text (a TLS client sees a protocol mismatch)."""
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def reset(conn: socket.socket) -> None:
    """Abort the connection with a TCP RST."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def truncated_chunks(conn: socket.socket) -> None:
    """Start a chunked body and hang up in the middle of a chunk."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-half")


def local_url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://user:SECRET@127.0.0.1:{port}{SECRET_PATH}"


def raised(exc_type: type[BaseException], call: Callable[[], object]) -> BaseException:
    """The exception of type ``exc_type`` that ``call`` raises."""
    with pytest.raises(exc_type) as info:
        call()
    return info.value


# -- exception factories -----------------------------------------------------------------

Get = Callable[[str], object]


def requests_get(timeout: float | tuple[float, float] = 2) -> Get:
    return lambda url: requests.get(url, timeout=timeout)


def httpx_get(timeout: float = 2) -> Get:
    return lambda url: httpx.get(url, timeout=timeout)


def urllib3_get(retries: urllib3.Retry | bool) -> Get:
    def get(url: str) -> None:
        with urllib3.PoolManager(retries=retries, timeout=0.2) as pool:
            pool.request("GET", url)

    return get


def socket_get(timeout: float = 2) -> Get:
    """A bare socket: connect, send a request line, wait for the answer."""

    def get(url: str) -> None:
        address = ("127.0.0.1", urlsplit(url).port or 80)
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            sock.recv(1)
            sock.recv(1)

    return get


def served(
    handle: Callable[[socket.socket], None],
    exc_type: type[BaseException],
    get: Get,
    scheme: str = "http",
) -> BaseException:
    """What ``get`` raises from a local server that handles connections with ``handle``."""
    with tcp_server(handle) as port:
        return raised(exc_type, lambda: get(local_url(port, scheme)))


def unanswered(exc_type: type[BaseException], get: Get) -> BaseException:
    """What ``get`` raises from a local server that never answers."""
    with silent_server() as port:
        return raised(exc_type, lambda: get(local_url(port)))


def refused(exc_type: type[BaseException], get: Get) -> BaseException:
    """What ``get`` raises from a port that nothing listens on."""
    return raised(exc_type, lambda: get(local_url(closed_port())))


def requests_status(status: int, headers: dict[str, str] | None = None) -> BaseException:
    response = requests.Response()
    response.status_code = status
    response.url = URL
    response.headers.update(headers or {})
    response.request = requests.Request("GET", URL).prepare()
    return raised(requests.HTTPError, response.raise_for_status)


def httpx_status(status: int, headers: dict[str, str] | None = None) -> BaseException:
    response = httpx.Response(status, headers=headers, request=httpx.Request("GET", URL))
    return raised(httpx.HTTPStatusError, response.raise_for_status)


def requests_read_timeout() -> BaseException:
    return unanswered(requests.ReadTimeout, requests_get(timeout=(2, 0.2)))


def urllib3_read_timeout_retries_exhausted() -> BaseException:
    return unanswered(MaxRetryError, urllib3_get(retries=urllib3.Retry(0)))


def requests_connect_timeout() -> BaseException:
    # A connect timeout cannot be provoked on loopback: built as requests builds it.
    pool = urllib3.HTTPSConnectionPool("api.example.com")
    reason = ConnectTimeoutError(None, "Connection to api.example.com timed out.")
    request = requests.Request("GET", URL).prepare()
    try:
        return requests.ConnectTimeout(MaxRetryError(pool, SECRET_PATH, reason), request=request)
    finally:
        pool.close()


def requests_proxy_refused() -> BaseException:
    proxies = {"http": f"http://127.0.0.1:{closed_port()}"}
    url = "http://api.example.com" + SECRET_PATH
    return raised(
        requests.exceptions.ProxyError, lambda: requests.get(url, proxies=proxies, timeout=2)
    )


def requests_too_many_redirects() -> BaseException:
    response = requests.Response()
    response.status_code = 302
    response.url = URL
    return requests.TooManyRedirects("Exceeded 30 redirects.", response=response)


def unreachable_url(exc_type: type[BaseException], get: Get, url: str) -> BaseException:
    """What ``get`` raises for a URL it cannot even try."""
    return raised(exc_type, lambda: get(url))


def soft_time_limit() -> BaseException:
    def exceed() -> None:
        raise SoftTimeLimitExceeded

    return raised(SoftTimeLimitExceeded, exceed)


# One row per default rule: factory, verdict, reached the server, cause (a regex).
TABLE = [
    pytest.param(lambda: requests_status(503), T, True, f"HTTP 503 from {API}", id="requests-503"),
    pytest.param(lambda: requests_status(429), R, True, f"HTTP 429 from {API}", id="requests-429"),
    pytest.param(lambda: requests_status(404), P, True, f"HTTP 404 from {API}", id="requests-404"),
    pytest.param(lambda: requests_status(501), P, True, f"HTTP 501 from {API}", id="requests-501"),
    pytest.param(
        lambda: refused(requests.ConnectionError, requests_get()),
        *(T, False, f"ConnectionError to {LOCAL}"),
        id="requests-refused",
    ),
    pytest.param(
        requests_connect_timeout,
        *(T, False, f"ConnectTimeout to {API}"),
        id="requests-connect-timeout",
    ),
    pytest.param(
        requests_read_timeout,
        *(T, True, f"ReadTimeout to {LOCAL}"),
        id="requests-read-timeout",
    ),
    pytest.param(
        lambda: served(hang_up, requests.ConnectionError, requests_get()),
        *(T, True, f"ConnectionError to {LOCAL}"),
        id="requests-remote-disconnected",
    ),
    pytest.param(
        lambda: served(reset, requests.ConnectionError, requests_get()),
        *(T, True, f"ConnectionError to {LOCAL}"),
        id="requests-reset",
    ),
    pytest.param(
        lambda: served(truncated_chunks, requests.exceptions.ChunkedEncodingError, requests_get()),
        *(T, True, f"ChunkedEncodingError(?: to {LOCAL})?"),
        id="requests-truncated-chunked-body",
    ),
    pytest.param(
        requests_proxy_refused,
        *(T, False, f"ProxyError to {API}"),
        id="requests-proxy-refused",
    ),
    pytest.param(
        lambda: served(answer_in_plain_http, requests.exceptions.SSLError, requests_get(), "https"),
        *(P, True, f"SSLError to {LOCAL}"),
        id="requests-tls-protocol-mismatch",
    ),
    pytest.param(
        lambda: served(hang_up, requests.exceptions.SSLError, requests_get(), "https"),
        *(T, True, f"SSLError to {LOCAL}"),
        id="requests-tls-handshake-cut-short",
    ),
    pytest.param(
        lambda: unreachable_url(
            requests.exceptions.MissingSchema, requests_get(), API + SECRET_PATH
        ),
        *(P, True, "MissingSchema"),
        id="requests-no-schema",
    ),
    pytest.param(
        requests_too_many_redirects,
        *(P, True, f"TooManyRedirects to {API}"),
        id="requests-too-many-redirects",
    ),
    pytest.param(lambda: httpx_status(502), T, True, f"HTTP 502 from {API}", id="httpx-502"),
    pytest.param(lambda: httpx_status(429), R, True, f"HTTP 429 from {API}", id="httpx-429"),
    pytest.param(lambda: httpx_status(403), P, True, f"HTTP 403 from {API}", id="httpx-403"),
    pytest.param(
        lambda: refused(httpx.ConnectError, httpx_get()),
        *(T, False, f"ConnectError to {LOCAL}"),
        id="httpx-refused",
    ),
    pytest.param(
        lambda: unanswered(httpx.ReadTimeout, httpx_get(timeout=0.2)),
        *(T, True, f"ReadTimeout to {LOCAL}"),
        id="httpx-read-timeout",
    ),
    pytest.param(
        lambda: served(hang_up, httpx.RemoteProtocolError, httpx_get()),
        *(T, True, f"RemoteProtocolError to {LOCAL}"),
        id="httpx-remote-protocol-error",
    ),
    pytest.param(
        lambda: served(answer_in_plain_http, httpx.ConnectError, httpx_get(), "https"),
        *(P, False, f"ConnectError to {LOCAL}"),
        id="httpx-tls-protocol-mismatch",
    ),
    pytest.param(
        lambda: served(hang_up, httpx.ConnectError, httpx_get(), "https"),
        *(T, False, f"ConnectError to {LOCAL}"),
        id="httpx-tls-handshake-cut-short",
    ),
    pytest.param(
        lambda: unreachable_url(
            httpx.UnsupportedProtocol, httpx_get(), f"ftp://{API}{SECRET_PATH}"
        ),
        *(P, True, f"UnsupportedProtocol to {API}"),
        id="httpx-unsupported-protocol",
    ),
    pytest.param(
        lambda: refused(urllib3.exceptions.NewConnectionError, urllib3_get(retries=False)),
        *(T, False, f"NewConnectionError to {LOCAL}"),
        id="urllib3-refused",
    ),
    pytest.param(
        urllib3_read_timeout_retries_exhausted,
        *(T, True, f"MaxRetryError to {LOCAL}"),
        id="urllib3-max-retries-read-timeout",
    ),
    pytest.param(
        lambda: served(answer_in_plain_http, MaxRetryError, urllib3_get(urllib3.Retry(0)), "https"),
        *(P, True, f"MaxRetryError to {LOCAL}"),
        id="urllib3-max-retries-tls-mismatch",
    ),
    pytest.param(
        lambda: served(hang_up, urllib3.exceptions.ProtocolError, urllib3_get(retries=False)),
        *(T, True, f"ProtocolError(?: to {LOCAL})?"),
        id="urllib3-protocol-error",
    ),
    pytest.param(
        lambda: refused(ConnectionRefusedError, socket_get()),
        *(T, False, "ConnectionRefusedError"),
        id="socket-refused",
    ),
    pytest.param(
        lambda: unanswered(TimeoutError, socket_get(timeout=0.2)),
        *(T, True, "TimeoutError"),
        id="socket-timeout",
    ),
    pytest.param(
        lambda: served(reset, ConnectionResetError, socket_get()),
        *(T, True, "ConnectionResetError"),
        id="socket-reset",
    ),
    pytest.param(lambda: BrokenPipeError(errno.EPIPE, "x"), T, True, "BrokenPipeError", id="pipe"),
    pytest.param(
        lambda: ConnectionAbortedError(errno.ECONNABORTED, "x"),
        *(T, True, "ConnectionAbortedError"),
        id="connection-aborted",
    ),
    pytest.param(
        lambda: socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        *(T, False, "gaierror"),
        id="dns-failure",
    ),
    pytest.param(
        lambda: OSError(errno.ENETUNREACH, "Network is unreachable"),
        *(T, True, "OSError"),
        id="network-unreachable",
    ),
    pytest.param(
        lambda: OSError(errno.EACCES, "Permission denied"),
        *(P, True, "PermissionError"),
        id="other-oserror",
    ),
    pytest.param(
        lambda: http.client.IncompleteRead(b"part", 10),
        *(T, True, "IncompleteRead"),
        id="incomplete-read",
    ),
    pytest.param(
        lambda: ssl.SSLCertVerificationError(1, "certificate verify failed"),
        *(P, True, "SSLCertVerificationError"),
        id="certificate-rejected",
    ),
    pytest.param(soft_time_limit, T, True, "SoftTimeLimitExceeded", id="soft-time-limit"),
    pytest.param(lambda: TransientError("SECRET"), T, True, "TransientError", id="transient"),
    pytest.param(lambda: PermanentError("SECRET"), P, True, "PermanentError", id="permanent"),
    pytest.param(lambda: ValueError("card SECRET"), P, True, "ValueError", id="unknown"),
]


@pytest.mark.parametrize(("make", "verdict", "reached", "cause"), TABLE)
def test_default_table(
    make: Callable[[], BaseException], verdict: Verdict, reached: bool, cause: str
) -> None:
    """Each default rule gives its verdict, says whether the server saw the request, and
    describes the failure by type, status and host."""
    failure = classify(make())
    assert (failure.verdict, failure.reached_server) == (verdict, reached)
    assert re.fullmatch(cause, failure.cause), failure.cause


@pytest.mark.parametrize(("make", "verdict", "reached", "cause"), TABLE)
def test_no_secret_leaks(
    make: Callable[[], BaseException], verdict: Verdict, reached: bool, cause: str
) -> None:
    """No field holds the URL's path, query, user info or the exception's message."""
    failure = classify(make())
    fields = (failure.cause, failure.host or "", failure.exc_type)
    assert not [text for text in fields if "SECRET" in text or "/" in text]
    assert failure.cause.isprintable()


def test_http_error_facts() -> None:
    """An HTTP error gives its status, the bare host and the library's exception type."""
    failure = classify(requests_status(503))
    assert (failure.status, failure.host, failure.exc_type) == (
        503,
        "api.example.com",
        "requests.exceptions.HTTPError",
    )


def test_httpx_exception_type_names_the_public_module() -> None:
    """``exc_type`` names httpx's public module, not its private ``httpx._exceptions``."""
    assert classify(httpx_status(500)).exc_type == "httpx.HTTPStatusError"


def test_host_keeps_explicit_port_and_drops_default() -> None:
    """The host carries the port when the URL names a non-default one."""
    with_port = requests.Response()
    with_port.status_code, with_port.url = 500, "https://api.example.com:8443/x?k=SECRET"
    default_port = requests.Response()
    default_port.status_code, default_port.url = 500, "https://api.example.com:443/x"
    hosts = [
        classify(raised(requests.HTTPError, r.raise_for_status)).host
        for r in (with_port, default_port)
    ]
    assert hosts == ["api.example.com:8443", "api.example.com"]


def test_ipv6_host_is_bracketed() -> None:
    """An IPv6 host is written in brackets so its port stays readable."""
    response = httpx.Response(503, request=httpx.Request("GET", "http://[::1]:8080/x?k=SECRET"))
    failure = classify(raised(httpx.HTTPStatusError, response.raise_for_status))
    assert failure.cause == "HTTP 503 from [::1]:8080"


def test_urllib3_host_comes_from_the_pool() -> None:
    """A raw urllib3 error takes its host from the connection pool."""
    failure = classify(urllib3_read_timeout_retries_exhausted())
    assert re.fullmatch(LOCAL, failure.host or "")


# -- the status table --------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 520, 522, 524, 529, 599])
def test_transient_statuses(status: int) -> None:
    """408, 425, 500, 502, 503, 504 and the CDNs' origin-unreachable answers are transient."""
    assert status_verdict(status) is T


def test_429_is_rate_limited() -> None:
    """429 is rate-limited."""
    assert status_verdict(429) is R


@pytest.mark.parametrize(
    "status",
    [s for s in range(400, 600) if s not in TRANSIENT_STATUSES | {429}],
)
def test_every_other_error_status_is_permanent(status: int) -> None:
    """501, 505 and every other 4xx and 5xx status are permanent."""
    assert status_verdict(status) is P


@pytest.mark.parametrize("status", [100, 200, 204, 301, 304, 399, 600, 999])
def test_non_error_statuses_have_no_verdict(status: int) -> None:
    """Statuses outside 400-599 are not errors: no verdict."""
    assert status_verdict(status) is None


def test_sdk_exception_with_a_response_is_judged_by_its_status() -> None:
    """An unknown exception that carries a ``response`` is judged by its status."""

    class VendorAPIError(Exception):
        def __init__(self, response: httpx.Response) -> None:
            super().__init__("SECRET")
            self.response = response

    response = httpx.Response(504, request=httpx.Request("GET", URL))
    failure = classify(VendorAPIError(response))
    assert (failure.verdict, failure.cause) == (T, "HTTP 504 from api.example.com")


# -- precedence --------------------------------------------------------------------------


def test_task_errors_win_over_give_up_on() -> None:
    """TransientError raised by the task wins over the task's own give_up_on."""
    failure = classify(TransientError(), give_up_on=(TransientError,))
    assert failure.verdict is T


def test_permanent_error_wins_over_retry_on_and_classifier() -> None:
    """PermanentError raised by the task wins over retry_on and the classifier."""
    failure = classify(PermanentError(), retry_on=(PermanentError,), classifier=lambda _: T)
    assert failure.verdict is P


def test_give_up_on_overrides_a_transient_default() -> None:
    """give_up_on makes a default-transient exception permanent."""
    assert classify(requests_read_timeout(), give_up_on=(requests.Timeout,)).verdict is P


def test_retry_on_overrides_a_permanent_default() -> None:
    """retry_on makes an unknown exception transient."""
    assert classify(KeyError("x"), retry_on=(KeyError,)).verdict is T


def test_give_up_on_wins_where_both_match() -> None:
    """Where retry_on and give_up_on both match, give_up_on wins."""
    failure = classify(KeyError("x"), retry_on=(LookupError,), give_up_on=(KeyError,))
    assert failure.verdict is P


def test_retry_on_is_asked_before_the_classifier() -> None:
    """retry_on decides before the classifier is asked."""
    failure = classify(KeyError("x"), retry_on=(KeyError,), classifier=lambda _: P)
    assert failure.verdict is T


def test_classifier_overrides_the_defaults() -> None:
    """A classifier's verdict replaces the default one, RATE_LIMITED included."""
    assert classify(requests_status(404), classifier=lambda _: R).verdict is R


def test_classifier_returning_none_falls_through() -> None:
    """A classifier that returns None leaves the decision to the defaults."""
    assert classify(requests_status(503), classifier=lambda _: None).verdict is T


def test_classifier_exceptions_propagate() -> None:
    """An exception raised by the classifier itself propagates: it is a bug."""

    def broken(exc: BaseException) -> Verdict | None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        classify(ValueError(), classifier=broken)


def test_classifier_returning_junk_is_a_type_error() -> None:
    """A classifier that returns neither a Verdict nor None raises TypeError."""
    with pytest.raises(TypeError, match="classifier"):
        classify(ValueError(), classifier=lambda _: True)  # type: ignore[arg-type,return-value]


# -- causes ------------------------------------------------------------------------------


class UpstreamError(Exception):
    """A task's own wrapper exception."""


def wrapped(inner: BaseException, *wrappers: type[BaseException]) -> BaseException:
    """``inner`` raised ``from`` each wrapper in turn, innermost first."""
    exc = inner
    for wrapper in wrappers:
        try:
            raise wrapper("SECRET") from exc
        except wrapper as outer:
            exc = outer
    return exc


def test_explicit_cause_of_an_unknown_wrapper_decides() -> None:
    """``raise Wrapper from ReadTimeout`` is judged by the read timeout."""
    failure = classify(wrapped(requests_read_timeout(), UpstreamError))
    assert failure.verdict is T
    assert re.fullmatch(f"UpstreamError from ReadTimeout to {LOCAL}", failure.cause)
    assert failure.exc_type.endswith("UpstreamError")


def test_cause_facts_come_with_its_verdict() -> None:
    """Status, host and Retry-After come from the cause that decided."""
    failure = classify(wrapped(requests_status(429, {"Retry-After": "7"}), UpstreamError))
    assert (failure.verdict, failure.status, failure.retry_after) == (R, 429, 7.0)


def test_cause_is_followed_two_levels() -> None:
    """The cause's cause is still followed."""
    failure = classify(wrapped(TimeoutError(), UpstreamError, RuntimeError))
    assert (failure.verdict, failure.cause) == (
        T,
        "RuntimeError from UpstreamError from TimeoutError",
    )


def test_cause_is_not_followed_three_levels() -> None:
    """Three wrappers deep, the failure is unknown: permanent."""
    failure = classify(wrapped(TimeoutError(), UpstreamError, RuntimeError, UpstreamError))
    assert (failure.verdict, failure.cause) == (P, "UpstreamError")


def test_implicit_context_is_not_followed() -> None:
    """An error raised while handling a timeout (no ``from``) is not a timeout."""
    try:
        try:
            raise TimeoutError
        except TimeoutError:
            {}["missing"]
    except KeyError as exc:
        failure = classify(exc)
    assert failure.verdict is P


def test_a_known_exception_is_not_overruled_by_its_cause() -> None:
    """A 404 raised from a timeout is a 404."""
    not_found = requests_status(404)
    not_found.__cause__ = TimeoutError()
    assert classify(not_found).verdict is P


def test_causes_are_judged_by_the_task_rules_too() -> None:
    """retry_on applies to the cause as well."""
    failure = classify(wrapped(KeyError("k"), UpstreamError), retry_on=(KeyError,))
    assert failure.verdict is T


# -- Retry-After from answers -----------------------------------------------------------


def test_retry_after_seconds_on_429() -> None:
    """A 429's ``Retry-After: 120`` is 120 s."""
    assert classify(requests_status(429, {"Retry-After": "120"})).retry_after == 120.0


def test_retry_after_http_date_on_503() -> None:
    """A 503's HTTP-date ``Retry-After`` is measured from ``now``."""
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    failure = classify(httpx_status(503, {"Retry-After": date}), now=NOW)
    assert failure.retry_after == 90.0


def test_retry_after_is_ignored_on_other_statuses() -> None:
    """``Retry-After`` is read from 429 and 503 answers only."""
    assert classify(requests_status(500, {"Retry-After": "120"})).retry_after is None


def test_retry_after_from_a_huge_header_is_clamped() -> None:
    """An upstream cannot ask for more than MAX_RETRY_AFTER."""
    failure = classify(requests_status(429, {"Retry-After": "86400"}))
    assert failure.retry_after == MAX_RETRY_AFTER


def test_rate_limit_reset_epoch() -> None:
    """Without Retry-After, an ``X-RateLimit-Reset`` above 1e9 is an epoch time."""
    failure = classify(requests_status(429, {"X-RateLimit-Reset": str(int(NOW) + 30)}), now=NOW)
    assert failure.retry_after == 30.0


def test_rate_limit_reset_delta() -> None:
    """A small ``X-RateLimit-Reset`` is a number of seconds."""
    failure = classify(httpx_status(429, {"x-ratelimit-reset": "15"}), now=NOW)
    assert failure.retry_after == 15.0


def test_malformed_retry_after_falls_back_to_rate_limit_reset() -> None:
    """A garbage Retry-After gives way to X-RateLimit-Reset."""
    headers = {"Retry-After": "soon", "X-RateLimit-Reset": "12"}
    assert classify(requests_status(429, headers)).retry_after == 12.0


def test_no_header_no_retry_after() -> None:
    """A 429 without any header has no retry_after."""
    assert classify(requests_status(429)).retry_after is None


def test_transient_error_retry_after() -> None:
    """TransientError(retry_after=10) gives 10 s."""
    assert classify(TransientError(retry_after=10)).retry_after == 10.0


def test_transient_error_retry_after_is_kept_up_to_a_day() -> None:
    """A task's own long retry_after is kept (the upstream's clamp is an hour) up to a day."""
    assert classify(TransientError(retry_after=7200)).retry_after == 7200.0


@pytest.mark.parametrize("given_value", [1e9, math.inf, 86_400.5])
def test_transient_error_retry_after_is_clamped_to_a_day(given_value: float) -> None:
    """1e9 s is not a wait, it is a lost task: clamped to MAX_TASK_RETRY_AFTER (one day),
    on the exception itself and when classified (also when set after construction)."""
    assert MAX_TASK_RETRY_AFTER == 86_400.0
    assert TransientError(retry_after=given_value).retry_after == MAX_TASK_RETRY_AFTER
    assert classify(TransientError(retry_after=given_value)).retry_after == MAX_TASK_RETRY_AFTER
    late = TransientError()
    late.retry_after = given_value
    assert classify(late).retry_after == MAX_TASK_RETRY_AFTER


@pytest.mark.parametrize(("given_value", "expected"), [(-3.0, 0.0), (math.nan, None)])
def test_transient_error_retry_after_is_sanitised(
    given_value: float, expected: float | None
) -> None:
    """A negative retry_after is 0; a NaN one is ignored."""
    assert classify(TransientError(retry_after=given_value)).retry_after == expected


# -- parse_retry_after -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        (" 7\t", 7.0),
        ("0", 0.0),
        (120, 120.0),
        (2.5, 2.5),
        ("-5", 0.0),
        (-5, 0.0),
        ("7200", MAX_RETRY_AFTER),
        (email.utils.formatdate(NOW - 100, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
    ids=[
        "int",
        "float",
        "whitespace",
        "zero",
        "number",
        "float-number",
        "negative",
        "negative-number",
        "clamped",
        "past-date",
        "future-date",
        "rfc-example",
    ],
)
def test_parse_retry_after_accepts(value: object, expected: float) -> None:
    """Seconds (int or float, str or number) and GMT HTTP-dates; negative is 0; long is clamped."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "nan",
        "inf",
        "-inf",
        "1e3",
        "12abc",
        "5 s",
        "\x005",
        "5\n",
        "5\r\n",
        "9" * 400,
        "1" + "0" * 12,
        "Wed, 21 Oct 2015 07:28:00 +0200",
        "Wed, 21 Oct 2015 07:28:00",
        "Wed, 21 Oct 2015 07:28:00 -0000",
        "Wed, 99 Foo 2015 07:28:00 GMT",
        b"120",
        None,
        True,
        [120],
        math.nan,
        math.inf,
        -math.inf,
        10**400,
        1e12,
    ],
)
def test_parse_retry_after_rejects(value: object) -> None:
    """Garbage, NaN, infinities, huge numbers, control characters, non-GMT or zone-less
    dates, and values that are neither str nor number give None."""
    assert parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_limit() -> None:
    """``limit`` sets the clamp."""
    assert parse_retry_after("100", limit=10) == 10.0


def test_parse_retry_after_rejects_a_negative_limit() -> None:
    """A negative or NaN limit is a programming error."""
    with pytest.raises(ValueError, match="limit"):
        parse_retry_after("1", limit=math.nan)


def test_parse_retry_after_defaults_now_to_the_clock() -> None:
    """Without ``now``, an HTTP-date is measured from the current time."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    far = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert far == MAX_RETRY_AFTER


@given(st.text())
def test_parse_retry_after_never_raises_on_text(value: str) -> None:
    """Any text gives None or a float in [0, MAX_RETRY_AFTER]."""
    seconds = parse_retry_after(value)
    assert seconds is None or (isinstance(seconds, float) and 0.0 <= seconds <= MAX_RETRY_AFTER)


@given(
    st.one_of(st.integers(), st.floats(), st.binary(), st.none(), st.booleans()),
    st.floats(min_value=0, max_value=1e6),
)
def test_parse_retry_after_never_raises_on_other_values(value: object, limit: float) -> None:
    """Any number or other value gives None or a float in [0, limit]."""
    seconds = parse_retry_after(value, limit=limit)
    assert seconds is None or (isinstance(seconds, float) and 0.0 <= seconds <= limit)


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_retry_after_reads_every_plain_delay(value: int) -> None:
    """Every whole number of seconds up to 1e9 is read, then clamped."""
    assert parse_retry_after(str(value)) == min(float(value), MAX_RETRY_AFTER)


# -- the module itself ------------------------------------------------------------------


def test_failure_is_frozen() -> None:
    """A Failure is an immutable value."""
    failure = classify(ValueError())
    assert isinstance(failure, Failure)
    with pytest.raises(AttributeError):
        failure.verdict = T  # type: ignore[misc]


_CORE = Path(__file__).resolve().parents[2] / "celery_resilience" / "core"


@pytest.mark.parametrize("module", sorted(p.name for p in _CORE.glob("*.py")))
def test_core_modules_import_no_framework(module: str) -> None:
    """The core modules import nothing from Celery, billiard, kombu, Redis or an HTTP library."""
    source = _CORE / module
    tree = ast.parse(source.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.partition(".")[0])
    assert not imported & {"celery", "billiard", "kombu", "redis", "requests", "httpx", "urllib3"}
