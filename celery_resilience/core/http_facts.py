"""What an HTTP library's exception says about the failure: status, host, Retry-After.

Read from the exception's attributes (``response``, ``request``, urllib3's ``pool``...)
without importing any HTTP library, and never from its message: a status code, a
``host[:port]`` and a wait in seconds are all that leave this module. Headers from the
outside world are parsed defensively: garbage, NaN, infinities and absurd numbers give
nothing, long waits are clamped.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

from celery_resilience.core.errors import clamp_retry_after

__all__ = [
    "MAX_RETRY_AFTER",
    "attr",
    "host_of",
    "parse_retry_after",
    "response_retry_after",
    "status_of",
    "task_retry_after",
]

#: The longest wait, in seconds, that an upstream's header may ask for.
MAX_RETRY_AFTER: float = 3600.0

_DEFAULT_PORTS = {"http": 80, "https": 443}
_RESET_HEADERS = ("X-RateLimit-Reset", "RateLimit-Reset")
# Above this a "number of seconds" is not a delay but a broken header (or an epoch time).
_HUGE_SECONDS = 1e9
_MAX_HEADER_CHARS = 100
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_UNSAFE_HOST_CHARS = frozenset(" /\\?#@")


def parse_retry_after(
    value: object, *, now: float | None = None, limit: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` when it is malformed.

    ``value`` is a number of seconds (``"120"``, ``"1.5"``, ``120``) or an HTTP-date in
    GMT, measured from ``now`` (default ``time.time()``). A wait in the past or a negative
    one is 0; a long one is clamped to ``limit``. Garbage, NaN, infinities, absurdly large
    numbers (above 1e9 s), control characters and non-str, non-number values give
    ``None``::

        >>> parse_retry_after("120"), parse_retry_after("7200"), parse_retry_after("soon")
        (120.0, 3600.0, None)
    """
    if not limit >= 0:
        raise ValueError(f"parse_retry_after: limit must be >= 0, got {limit!r}")
    seconds = _seconds(value, now, epoch=False)
    return None if seconds is None else min(max(seconds, 0.0), limit)


def attr(obj: object, name: str) -> object:
    """``getattr`` for objects of other libraries, whose properties may raise."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    # httpx raises RuntimeError for an unset .request; any other SDK's property may
    # raise anything, and a broken attribute must not break classification.
    except Exception:  # noqa: BLE001
        return None


def status_of(response: object) -> int | None:
    status = attr(response, "status_code")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return status
    return None


def host_of(exc: BaseException, response: object, chain: list[BaseException]) -> str | None:
    """``host[:port]`` of the upstream, from the response, the request, or urllib3."""
    for source in (response, attr(exc, "request")):
        host = _urlhost_of(attr(source, "url"))
        if host:
            return host
    for inner in chain:
        for holder in (attr(inner, "pool"), attr(inner, "conn")):
            default_port = _DEFAULT_PORTS.get(str(attr(holder, "scheme")))
            host = _formathost_of(
                attr(holder, "host"),
                attr(holder, "port"),
                default_port or attr(holder, "default_port"),
            )
            if host:
                return host
    return None


def _urlhost_of(url: object) -> str | None:
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            return None
        try:
            port = parts.port
        except ValueError:
            port = None
        return _formathost_of(host, port, _DEFAULT_PORTS.get(parts.scheme))
    # httpx.URL and alike: read the parts, never the whole URL.
    scheme = attr(url, "scheme")
    return _formathost_of(attr(url, "host"), attr(url, "port"), _DEFAULT_PORTS.get(str(scheme)))


def _formathost_of(host: object, port: object, default_port: object) -> str | None:
    if not isinstance(host, str) or not host:
        return None
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if len(host) > 255 or not host.isprintable() or not _UNSAFE_HOST_CHARS.isdisjoint(host):
        return None
    if isinstance(port, int) and not isinstance(port, bool) and port != default_port:
        return f"{host}:{port}"
    return host


def task_retry_after(value: object, now: float | None) -> float | None:
    """A task's own ``retry_after``: a number (inf and 1e9 included) clamped to
    ``MAX_TASK_RETRY_AFTER``, a text read like a header, anything else (NaN) ignored."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isnan(value) else clamp_retry_after(value)
    seconds = _seconds(value, now, epoch=False)
    return None if seconds is None else clamp_retry_after(seconds)


def response_retry_after(response: object, now: float | None) -> float | None:
    """``Retry-After``, else ``X-RateLimit-Reset``/``RateLimit-Reset``, of a response."""
    get = attr(attr(response, "headers"), "get")
    if not callable(get):
        return None
    for name in ("Retry-After", *_RESET_HEADERS):
        value = get(name)
        if value is None:
            value = get(name.lower())
        seconds = _seconds(value, now, epoch=name in _RESET_HEADERS)
        if seconds is not None:
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None


def _seconds(value: object, now: float | None, *, epoch: bool) -> float | None:
    """Seconds from now that a header value names; unclamped, ``None`` if malformed.

    With ``epoch`` (rate-limit reset headers) a number above 1e9 is an epoch time.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        text = value.strip(" \t")
        if not text or len(text) > _MAX_HEADER_CHARS or not text.isascii():
            return None
        if not text.isprintable():
            return None
        if _NUMBER.fullmatch(text) is None:
            return None if epoch else _until_http_date(text, now)
        number = float(text)
    else:
        return None
    if epoch and number > _HUGE_SECONDS:
        number -= time.time() if now is None else now
    if not math.isfinite(number) or abs(number) > _HUGE_SECONDS:
        return None
    return number


def _until_http_date(text: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None or when.utcoffset() != timedelta(0):
        return None
    try:
        at = when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return at - (time.time() if now is None else now)
