"""Classification of a failed attempt: transient, permanent or rate-limited.

``classify`` turns the exception that ended an attempt into a ``Failure``: a
``Verdict`` and the few facts the rest of the library needs (HTTP status, host,
whether the request reached the server, how long the upstream asked us to wait).

The verdict is the first of these that applies:

1. ``TransientError`` / ``PermanentError`` raised by the task code; ``DeadlineSpent``
   (a call the task's session did not start) is TRANSIENT, but never retried: the attempt
   gives up as by its deadline (see :func:`celery_resilience.core.decide.plan_failure`);
2. the task's ``give_up_on`` types: PERMANENT;
3. the task's ``retry_on`` types: TRANSIENT (``give_up_on`` wins where both match);
4. the task's ``classifier(exc)``, unless it returns ``None``;
5. the defaults below;
6. the explicit cause (``raise Wrapper(...) from exc``), then the cause's cause, each
   judged by 1-5. Only ``__cause__`` is followed, never ``__context__``: an error raised
   while handling another one is a new failure, not a wrapper of the first;
7. anything else is PERMANENT: retrying an error nobody recognises only hides a bug.

Default rules by HTTP status, for ``requests.HTTPError``, ``httpx.HTTPStatusError`` and
any other exception carrying a ``response`` with an integer ``status_code`` (SDKs built
on either):

```text
408, 425, 500, 502, 503, 504           TRANSIENT
520-524, 529, 598, 599 (CDN, proxy)    TRANSIENT
429                                    RATE_LIMITED
501, 505, every other 4xx and 5xx      PERMANENT
```

``Retry-After`` (seconds or HTTP-date), else ``X-RateLimit-Reset`` / ``RateLimit-Reset``
(epoch seconds above 1e9, else seconds), is read from 429 and 503 answers.

Default rules by exception. A subclass follows its nearest listed ancestor; "no" in the
last column means the request certainly never reached the server:

```text
TRANSIENT                                                     reached the server
  TimeoutError (socket.timeout), ConnectionError and its
    subclasses (reset, aborted, broken pipe)                  maybe
  ConnectionRefusedError, socket.gaierror (DNS)               no
  OSError with errno ENETDOWN, ENETUNREACH, ENETRESET,
    EHOSTDOWN, EHOSTUNREACH                                   maybe
  http.client.IncompleteRead                                  maybe
  ssl.SSLEOFError, ssl.SSLZeroReturnError                     maybe
  requests  ConnectionError, Timeout, ChunkedEncodingError,
            RetryError                                        maybe
            ConnectTimeout, ProxyError, a refused connection  no
  urllib3   TimeoutError, ProtocolError, ResponseError        maybe
            ConnectTimeoutError, NewConnectionError,
            ProxyError, EmptyPoolError                        no
            MaxRetryError                                     as its ``reason``
  httpx     TimeoutException, NetworkError,
            RemoteProtocolError                               maybe
            ConnectError, ConnectTimeout, PoolTimeout,
            ProxyError                                        no
  celery    SoftTimeLimitExceeded                             maybe
PERMANENT
  ssl.SSLError, requests/urllib3 SSLError, an httpx ConnectError caused by an
    ssl.SSLError: a certificate, hostname or protocol mismatch does not heal by
    waiting; but a handshake cut short (SSLEOFError, SSLZeroReturnError inside
    the wrapper) is TRANSIENT, as a dropped connection is
  invalid URLs, schemes, headers; too many redirects; undecodable bodies
  every other OSError and every other exception
```

A proxy failure is a connection failure: ``requests`` already makes ``ProxyError`` a
``ConnectionError``, and a misconfigured proxy fails every attempt alike, which
``max_retries`` bounds. Nothing here imports Celery, requests, urllib3 or httpx: their
exceptions are recognised by the qualified names of the classes in their MRO, so an
HTTP library that is not installed costs nothing.
"""

# The module is a little over 400 lines because its tables (statuses, exception names,
# errnos) are written out one name per line, beside the rules that read them; what an
# exception says about a response is in celery_resilience.core.http_facts.

from __future__ import annotations

import enum
import errno
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celery_resilience.core.errors import DeadlineSpent, PermanentError, TransientError
from celery_resilience.core.http_facts import (
    MAX_RETRY_AFTER,
    attr,
    host_of,
    parse_retry_after,
    response_retry_after,
    status_of,
    task_retry_after,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "NOT_REACHED_EXCEPTIONS",
    "PERMANENT_EXCEPTIONS",
    "RATE_LIMITED_STATUSES",
    "RETRY_AFTER_STATUSES",
    "TRANSIENT_ERRNOS",
    "TRANSIENT_EXCEPTIONS",
    "TRANSIENT_STATUSES",
    "Classifier",
    "Failure",
    "Verdict",
    "classify",
    "parse_retry_after",
    "status_verdict",
]

#: HTTP statuses worth retrying: the upstream may well answer otherwise soon. Besides the
#: standard ones, the origin-unreachable answers of CDNs and proxies (Cloudflare's 520-524,
#: "site overloaded" 529, the network timeouts 598 and 599) say the same.
TRANSIENT_STATUSES = frozenset(
    {408, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529, 598, 599}
)

#: HTTP statuses meaning "too many requests": retried, honouring ``Retry-After``.
RATE_LIMITED_STATUSES = frozenset({429})

#: HTTP statuses whose ``Retry-After`` (or ``X-RateLimit-Reset``) header is read.
RETRY_AFTER_STATUSES = frozenset({429, 503})


#: Exceptions, by the qualified name of a class in their MRO, that are worth retrying.
TRANSIENT_EXCEPTIONS = frozenset(
    {
        # stdlib (asyncio and concurrent.futures have their own TimeoutError on 3.10)
        "builtins.TimeoutError",
        "builtins.ConnectionError",
        "asyncio.exceptions.TimeoutError",
        "concurrent.futures._base.TimeoutError",
        "socket.gaierror",
        "http.client.IncompleteRead",
        "ssl.SSLEOFError",
        "ssl.SSLZeroReturnError",
        # requests
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "requests.exceptions.ChunkedEncodingError",
        "requests.exceptions.RetryError",
        "requests.exceptions.ProxyError",
        # urllib3
        "urllib3.exceptions.TimeoutError",
        "urllib3.exceptions.ProtocolError",
        "urllib3.exceptions.ResponseError",
        "urllib3.exceptions.ProxyError",
        "urllib3.exceptions.EmptyPoolError",
        "urllib3.exceptions.MaxRetryError",
        # httpx
        "httpx.TimeoutException",
        "httpx.NetworkError",
        "httpx.RemoteProtocolError",
        "httpx.ProxyError",
        # celery (defined by billiard, re-exported as celery.exceptions.SoftTimeLimitExceeded)
        "billiard.exceptions.SoftTimeLimitExceeded",
    }
)

#: Exceptions that retrying cannot help. Unknown exceptions are permanent anyway; these
#: are listed where they subclass a transient one, or to write the decision down.
PERMANENT_EXCEPTIONS = frozenset(
    {
        "ssl.SSLError",
        "requests.exceptions.SSLError",
        "requests.exceptions.TooManyRedirects",
        "requests.exceptions.URLRequired",
        "requests.exceptions.MissingSchema",
        "requests.exceptions.InvalidSchema",
        "requests.exceptions.InvalidURL",
        "requests.exceptions.InvalidHeader",
        "requests.exceptions.ContentDecodingError",
        "requests.exceptions.InvalidJSONError",
        "urllib3.exceptions.SSLError",
        "urllib3.exceptions.LocationValueError",
        "urllib3.exceptions.DecodeError",
        "urllib3.exceptions.HeaderParsingError",
        "httpx.UnsupportedProtocol",
        "httpx.LocalProtocolError",
        "httpx.TooManyRedirects",
        "httpx.DecodingError",
        "httpx.InvalidURL",
    }
)

#: Exceptions raised before the request was sent: the server certainly never saw it.
NOT_REACHED_EXCEPTIONS = frozenset(
    {
        "builtins.ConnectionRefusedError",
        "socket.gaierror",
        "requests.exceptions.ConnectTimeout",
        "requests.exceptions.ProxyError",
        "urllib3.exceptions.ConnectTimeoutError",  # NewConnectionError, NameResolutionError
        "urllib3.exceptions.ProxyError",
        "urllib3.exceptions.EmptyPoolError",
        "httpx.ConnectError",
        "httpx.ConnectTimeout",
        "httpx.PoolTimeout",
        "httpx.ProxyError",
    }
)

#: ``errno`` values of a plain ``OSError`` that mean the network is away for a while.
TRANSIENT_ERRNOS = frozenset(
    {errno.ENETDOWN, errno.ENETUNREACH, errno.ENETRESET, errno.EHOSTDOWN, errno.EHOSTUNREACH}
)

# Wrappers whose verdict is that of the ssl.SSLError inside them, when there is one.
_SSL_WRAPPERS = frozenset(
    {"requests.exceptions.SSLError", "urllib3.exceptions.SSLError", "httpx.ConnectError"}
)
_SSL_ERROR = frozenset({"ssl.SSLError"})
_MAX_RETRY_ERROR = frozenset({"urllib3.exceptions.MaxRetryError"})
# Exceptions of these packages are looked into (reason, original_error, args, __cause__)
# to find what they wrap, as urllib3's own Retry unwraps ProxyError.original_error.
_HTTP_LIBRARIES = frozenset({"requests", "urllib3", "httpx", "httpcore"})
_LIBRARY_DEPTH = 5
_REASON_DEPTH = 3
_CAUSE_DEPTH = 2
_MAX_NAME_CHARS = 100


class Verdict(enum.Enum):
    """What to do about a failure: retry it, give up, or retry it more slowly."""

    TRANSIENT = "transient"
    """It may pass: retried after a backoff countdown; charges the breaker."""
    PERMANENT = "permanent"
    """Retrying cannot help: the task fails at once; the breaker counts a success."""
    RATE_LIMITED = "rate_limited"
    """Too many calls (429): retried after ``Retry-After``, which also pauses the limiter."""


Classifier = Callable[[BaseException], Verdict | None]
"""A task's own rule: a :class:`Verdict`, or ``None`` to let the defaults decide."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What the rest of the library knows about one failed attempt.

    Every field is safe to log: ``cause`` holds a type name, a status and a host, never
    a URL path, a query string or an exception message (they can hold secrets or task
    input)::

        Failure(verdict=Verdict.TRANSIENT, cause="HTTP 503 from api.example.com",
                status=503, host="api.example.com",
                exc_type="requests.exceptions.HTTPError", retry_after=30.0,
                reached_server=True)
    """

    verdict: Verdict
    cause: str
    status: int | None
    host: str | None
    exc_type: str
    retry_after: float | None
    reached_server: bool


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one exception says about itself, before the task's own rules apply."""

    verdict: Verdict | None
    label: str
    status: int | None
    host: str | None
    retry_after: float | None
    reached_server: bool


def classify(
    exc: BaseException,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    give_up_on: tuple[type[BaseException], ...] = (),
    classifier: Classifier | None = None,
    now: float | None = None,
) -> Failure:
    """Judge the exception that ended an attempt (see the module docstring for the rules).

    ``now`` (epoch seconds, default ``time.time()``) is the instant HTTP-dates in
    ``Retry-After`` are measured from. An exception raised by ``classifier`` propagates:
    a broken classifier is a bug to surface, not a failure to retry::

        >>> classify(TimeoutError()).verdict
        <Verdict.TRANSIENT: 'transient'>
    """
    top = _inspect(exc, now)
    facts, level = top, exc
    outer: list[str] = []
    for depth in range(_CAUSE_DEPTH + 1):
        verdict = _task_verdict(level, retry_on, give_up_on, classifier) or facts.verdict
        if verdict is not None:
            return _failure(exc, verdict, facts, outer)
        cause = level.__cause__
        if cause is None or depth == _CAUSE_DEPTH:
            break
        outer.append(_safe_name(type(level)))
        level = cause
        facts = _inspect(level, now)
    return _failure(exc, Verdict.PERMANENT, top, [])


def status_verdict(status: int) -> Verdict | None:
    """The verdict for an HTTP status, ``None`` for one that is not an error.

    >>> status_verdict(503), status_verdict(404)
    (<Verdict.TRANSIENT: 'transient'>, <Verdict.PERMANENT: 'permanent'>)
    >>> status_verdict(302) is None
    True
    """
    if status in TRANSIENT_STATUSES:
        return Verdict.TRANSIENT
    if status in RATE_LIMITED_STATUSES:
        return Verdict.RATE_LIMITED
    if 400 <= status <= 599:
        return Verdict.PERMANENT
    return None


def _failure(exc: BaseException, verdict: Verdict, facts: _Facts, outer: list[str]) -> Failure:
    return Failure(
        verdict=verdict,
        cause=" from ".join([*outer, facts.label]),
        status=facts.status,
        host=facts.host,
        exc_type=_qualified_name(type(exc)),
        retry_after=facts.retry_after,
        reached_server=facts.reached_server,
    )


def _task_verdict(
    exc: BaseException,
    retry_on: tuple[type[BaseException], ...],
    give_up_on: tuple[type[BaseException], ...],
    classifier: Classifier | None,
) -> Verdict | None:
    """Rules 1-4: the task code's and the task's own say."""
    if isinstance(exc, PermanentError):
        return Verdict.PERMANENT
    if isinstance(exc, (TransientError, DeadlineSpent)):
        return Verdict.TRANSIENT
    if isinstance(exc, give_up_on):
        return Verdict.PERMANENT
    if isinstance(exc, retry_on):
        return Verdict.TRANSIENT
    if classifier is None:
        return None
    verdict = classifier(exc)
    if verdict is not None and not isinstance(verdict, Verdict):
        raise TypeError(
            f"classifier {_safe_name(classifier)} returned {type(verdict).__name__}, "
            "not a Verdict or None"
        )
    return verdict


def _inspect(exc: BaseException, now: float | None) -> _Facts:
    """Rule 5 and the facts: status, host, Retry-After, whether the server saw it."""
    chain = _library_chain(exc)
    response = attr(exc, "response")
    status = status_of(response)
    host = host_of(exc, response, chain)
    if isinstance(exc, TransientError):
        retry_after = task_retry_after(exc.retry_after, now)
    elif status in RETRY_AFTER_STATUSES:
        retry_after = response_retry_after(response, now)
    else:
        retry_after = None
    if status is not None and status >= 400:
        label = f"HTTP {status}" + (f" from {host}" if host else "")
    else:
        label = _safe_name(type(exc)) + (f" to {host}" if host else "")
    return _Facts(
        verdict=_default_verdict(exc, status, chain),
        label=label,
        status=status,
        host=host,
        retry_after=retry_after,
        reached_server=not any(_matches(inner, NOT_REACHED_EXCEPTIONS) for inner in chain),
    )


def _default_verdict(
    exc: BaseException, status: int | None, chain: list[BaseException], depth: int = 0
) -> Verdict | None:
    if _matches(exc, _MAX_RETRY_ERROR):
        reason = attr(exc, "reason")
        if isinstance(reason, BaseException) and depth < _REASON_DEPTH:
            reason_chain = _library_chain(reason)
            return _default_verdict(reason, None, reason_chain, depth + 1) or Verdict.TRANSIENT
        return Verdict.TRANSIENT
    if _matches(exc, _SSL_WRAPPERS):
        for inner in chain[1:]:
            if _matches(inner, _SSL_ERROR):
                return _table_verdict(inner)
    verdict = _table_verdict(exc)
    if verdict is None and isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        verdict = Verdict.TRANSIENT
    if verdict is None and status is not None:
        verdict = status_verdict(status)
    return verdict


def _table_verdict(exc: BaseException) -> Verdict | None:
    """The verdict of the nearest class in the MRO that the tables list."""
    for name in _mro_names(exc):
        if name in TRANSIENT_EXCEPTIONS:
            return Verdict.TRANSIENT
        if name in PERMANENT_EXCEPTIONS:
            return Verdict.PERMANENT
    return None


def _mro_names(exc: BaseException) -> Iterable[str]:
    return (f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__)


def _matches(exc: BaseException, names: frozenset[str]) -> bool:
    return any(name in names for name in _mro_names(exc))


def _library_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what an HTTP library wrapped inside it, outermost first."""
    chain = [exc]
    current = exc
    while len(chain) < _LIBRARY_DEPTH and _package(type(current)) in _HTTP_LIBRARIES:
        inner = _wrapped(current)
        if inner is None or any(inner is seen for seen in chain):
            break
        chain.append(inner)
        current = inner
    return chain


def _wrapped(exc: BaseException) -> BaseException | None:
    candidates = (attr(exc, "reason"), attr(exc, "original_error"), *exc.args, exc.__cause__)
    return next((c for c in candidates if isinstance(c, BaseException)), None)


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def _qualified_name(cls: type) -> str:
    """``requests.exceptions.HTTPError``, ``httpx.ReadTimeout``, ``ValueError``.

    The module path stops before its first private part (``httpx._exceptions``).
    """
    if cls.__module__ == "builtins":
        return _one_line(cls.__qualname__)
    first, *rest = cls.__module__.split(".")
    public = itertools.takewhile(lambda part: not part.startswith("_"), rest)
    return _one_line(".".join([first, *public, cls.__qualname__]))


def _safe_name(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return _one_line(str(name))


def _one_line(text: str) -> str:
    """``text`` with no control characters, cut to a loggable length."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:_MAX_NAME_CHARS]
