"""Settings read from the Celery app's configuration (``app.conf``).

=============================== ===========================================================
setting                         meaning (default)
=============================== ===========================================================
``resilience_backend_url``      Redis for the shared state. Default: the broker URL if it is
                                Redis, else the result backend's if it is Redis, else an
                                error. ``redis://``, ``rediss://`` (TLS), ``unix://``, ACL
                                URLs (``redis://user:password@host/1``), and
                                ``redis+cluster://`` / ``redis+sentinel://`` (see
                                :mod:`celery_resilience.state.connect`) all work. The
                                name holds "backend" so Celery masks its password in
                                ``inspect conf`` and in Flower.
``resilience_key_prefix``       Prefix of every Redis key (``"resilience"``).
``resilience_fallback``         When Redis cannot be reached: ``"allow"`` (per-process
                                breakers and limiters, fail-open) or ``"defer"`` (every
                                attempt waits until Redis answers). (``"allow"``)
``resilience_duplicate_guard``  Which attempts hold a lease in Redis so that a redelivered
                                copy of a message never runs the same attempt twice:
                                ``"acks_late"`` (tasks that acknowledge late: the copies a
                                lost worker leaves) or ``"always"`` (every attempt: also the
                                copies the Redis broker redelivers when a message waited in
                                a worker's prefetch past its visibility timeout). Costs a
                                Redis round trip on tasks that have no breaker or limit.
                                (``"acks_late"``)
``resilience_attempt_lease``    Seconds an attempt holds its lease when the task has no
                                ``time_limit`` (``60``). A redelivered copy of a running
                                attempt waits this long at most.
``resilience_consumer_timeout`` RabbitMQ's ``consumer_timeout`` in seconds, for AMQP brokers
                                (``pyamqp://``, ``amqp://``, ``amqps://``): a worker holds a
                                countdown's message unacknowledged until it is due, and
                                RabbitMQ closes the channel of a message held longer. Each
                                single countdown stays below it by a margin (see
                                :func:`consumer_timeout_cap`); a longer wait is taken in
                                legs. Set it to the broker's own value (``1800``).
``resilience_redis_timeout``    Socket timeout towards the state store, seconds (``2.0``).
``resilience_backend_use_ssl``  TLS options for a ``rediss://`` state store, as Celery's
                                ``broker_use_ssl`` (whose value, or
                                ``redis_backend_use_ssl``'s, is used when the state store is
                                the broker's or the result backend's Redis).
``resilience_dead_letters_max`` Length of the dead-letter stream, approximately (``10000``).
``resilience_deadline_header``  Name of a header sent on every call of ``self.http`` made by
                                a task with a ``deadline``: the seconds left of it, with
                                millisecond precision (``"1.250"``), for an upstream that
                                can stop working for a caller that will not wait. An HTTP
                                token such as ``"X-Request-Timeout"``. (``None``: not sent)
``resilience_log_context``      Append trace and attempt to worker log lines whose format
                                does not show them already (``True``).
``resilience_hold_max``         Seconds a worker's consumer may hold a message of a task
                                with a rate limit until the slot it reserved for it on
                                arrival (``5.0``; ``0``: reserve nothing on arrival). See
                                :mod:`celery_resilience.integration.strategy`.
``resilience_grants_ahead``     The most grants a busy worker process is given ahead, with
                                the grant of one gated attempt, to hand to its next
                                attempts within 0.1 s without asking Redis (see
                                :mod:`celery_resilience.core.ahead`); ``0``: every gated
                                attempt asks Redis. An int from 0 to 1000. (``32``)
``resilience_park_after``       Waits longer than this many seconds are parked outside the
                                workers (in the Redis broker, or in a state store that
                                writes an append-only file) and published again when due,
                                instead of held as countdown messages; ``0`` turns parking
                                off (docs/parking.md). (``5.0``)
``resilience_park_lease``       Seconds a worker's releaser holds the entries it claimed
                                while it publishes them; if it dies meanwhile, another
                                releaser publishes them once the lease ran out. (``30.0``)
``resilience_park_poll``        Seconds between two looks of a worker's releaser at the
                                parked set, with +/- 50 % jitter. (``1.0``)
=============================== ===========================================================

``resilience_publish_retry_policy``: how often a retry or deferral whose message the
broker refused is offered again before the task fails for good (FAILURE, dead letter), as
kombu's retry policy: ``max_retries``, ``interval_start``, ``interval_step``,
``interval_max`` (``{"max_retries": 5, "interval_start": 0.5, "interval_step": 1.0,
"interval_max": 3.0}``: about 10 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from kombu.utils.url import maybe_sanitize_url

from celery_resilience.core.ahead import MOST_AHEAD
from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.core.validate import checked_number
from celery_resilience.state.connect import SCHEMES
from celery_resilience.state.fallback import FallbackMode
from celery_resilience.state.keys import DEFAULT_PREFIX, KeySpace

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "PublishRetry",
    "Settings",
    "amqp_consumer_timeout",
    "consumer_timeout_cap",
    "deadline_header",
    "read_settings",
    "redis_visibility_timeout",
    "visibility_timeout_cap",
]

#: Broker or result-backend URLs that can serve as the state store as they are.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: Brokers served by kombu's Redis transport (and its visibility timeout).
_REDIS_BROKER_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://", "sentinel://")
#: Brokers served by RabbitMQ (and its consumer_timeout).
_AMQP_BROKER_SCHEMES = ("amqp://", "amqps://", "pyamqp://", "librabbitmq://")
_DEFAULT_VISIBILITY = 3600.0
#: Which attempts hold a lease against redelivered copies of their message.
DuplicateGuard = Literal["acks_late", "always"]
#: RabbitMQ's own default consumer_timeout (30 minutes).
DEFAULT_CONSUMER_TIMEOUT = 1800.0
#: The most a countdown stays below the consumer timeout (see consumer_timeout_cap).
_CONSUMER_MARGIN = 300.0
#: An HTTP header name (RFC 9110 token), of a sane length.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
#: Headers the session sets or that carry secrets: never the budget header's name.
_RESERVED_HEADERS = frozenset(
    {"traceparent", "tracestate", "idempotency-key", "authorization", "cookie", "host"}
)


@dataclass(frozen=True, slots=True)
class PublishRetry:
    """``resilience_publish_retry_policy``: kombu's retry policy for publishing a retry or
    deferral the broker refused (``kombu.utils.functional.retry_over_time``)."""

    max_retries: int = 5
    interval_start: float = 0.5
    interval_step: float = 1.0
    interval_max: float = 3.0


def _publish_retry(conf: Any) -> PublishRetry:
    key = "resilience_publish_retry_policy"
    given = conf.get(key) or {}
    known = {f.name for f in fields(PublishRetry)}
    if not isinstance(given, dict) or set(given) - known:
        raise ResilienceConfigError(f"{key} must be a dict with keys among {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in given.items():
        try:
            values[name] = checked_number(
                value, what=f"{key}[{name!r}]", strict=False, integer=name == "max_retries"
            )
        except (TypeError, ValueError) as exc:
            raise ResilienceConfigError(str(exc)) from None
    return PublishRetry(**values)


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved settings of one app."""

    backend_url: str
    keys: KeySpace
    fallback: FallbackMode
    attempt_lease: float
    redis_timeout: float
    dead_letters_max: int
    log_context: bool
    visibility_timeout: float | None
    #: TLS options for a ``rediss://`` state store (``ssl_cert_reqs``, ``ssl_ca_certs``...).
    ssl: dict[str, Any] | None = None
    #: Which attempts hold a lease against redelivered copies: "acks_late" or "always".
    duplicate_guard: DuplicateGuard = "acks_late"
    #: The longest a consumer holds a message for the slot it reserved on arrival.
    hold_max: float = 5.0
    #: The most grants ahead a process asks for at once; 0: none.
    grants_ahead: int = MOST_AHEAD
    #: RabbitMQ's consumer_timeout (seconds) when the broker is AMQP, else None.
    consumer_timeout: float | None = None
    #: Waits longer than this (seconds) are parked; 0: parking off.
    park_after: float = 5.0
    #: Seconds a releaser's claim lasts.
    park_lease: float = 30.0
    #: Seconds between two looks of a releaser at the parked set (jittered).
    park_poll: float = 1.0
    #: How a refused retry or deferral is published again (kombu's retry policy).
    publish_retry: PublishRetry = field(default_factory=PublishRetry)
    #: The header that carries what is left of a task's deadline (None: not sent).
    deadline_header: str | None = None

    @property
    def broker_requeues(self) -> bool:
        """Whether a rejected message is put back by the broker itself (RabbitMQ), not
        pushed back by the worker through the very commands a failed publish used
        (kombu's Redis transport, which drops a message it cannot push back)."""
        return self.consumer_timeout is not None

    @property
    def countdown_cap(self) -> float | None:
        """The longest single countdown the broker holds safely: below the Redis broker's
        visibility timeout, and below RabbitMQ's consumer timeout (``None``: no cap)."""
        caps = []
        if self.visibility_timeout is not None:
            caps.append(visibility_timeout_cap(self.visibility_timeout))
        if self.consumer_timeout is not None:
            caps.append(consumer_timeout_cap(self.consumer_timeout))
        return min(caps) if caps else None


def visibility_timeout_cap(visibility_timeout: float) -> float:
    """The longest countdown below the Redis broker's visibility timeout: a minute less
    (a fifth less when that is shorter), and never below half of it::

        >>> visibility_timeout_cap(3600.0), visibility_timeout_cap(10.0)
        (3540.0, 8.0)
    """
    vt = visibility_timeout
    return max(vt - min(60.0, 0.2 * vt), 0.5 * vt)


def consumer_timeout_cap(consumer_timeout: float) -> float:
    """The longest countdown below RabbitMQ's ``consumer_timeout``: five minutes less, and
    never more than half of it for timeouts under ten minutes::

        >>> consumer_timeout_cap(1800.0), consumer_timeout_cap(60.0)
        (1500.0, 30.0)

    RabbitMQ counts from the delivery to the acknowledgement and checks about once a
    minute, closing the channel (and so stopping the worker) at the first check that finds
    a message held too long. A countdown's message is delivered soon after it is
    published, but it is acknowledged only when a pool process takes it (after the body,
    for ``acks_late`` tasks), and it falls due by the clock of the worker holding it, not
    the one that published it. The margin absorbs that lateness: a busy pool, a skewed
    clock, a check that comes just after a slow hand-over. Five minutes is more than any
    one check interval, and half the timeout keeps short (test) timeouts safe too.
    """
    return max(consumer_timeout - _CONSUMER_MARGIN, 0.5 * consumer_timeout)


def _first_url(value: object) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    return value.split(";", 1)[0].strip()


def _is_redis(url: str | None) -> bool:
    return url is not None and url.lower().startswith(_REDIS_SCHEMES)


def redis_visibility_timeout(app: Celery) -> float | None:
    """The Redis broker's visibility timeout, or None when the broker is not Redis."""
    broker = _first_url(app.conf.broker_url)
    if broker is None or not broker.lower().startswith(_REDIS_BROKER_SCHEMES):
        return None
    options = app.conf.broker_transport_options or {}
    value = options.get("visibility_timeout", _DEFAULT_VISIBILITY)
    return float(value)


def amqp_consumer_timeout(app: Celery) -> float | None:
    """``resilience_consumer_timeout`` when the worker consumes from an AMQP broker
    (Celery's default when no broker is set), else None."""
    conf = app.conf
    broker = _first_url(conf.broker_read_url) or _first_url(conf.broker_url)
    if broker is not None and not broker.lower().startswith(_AMQP_BROKER_SCHEMES):
        return None
    return _number(conf, "resilience_consumer_timeout", DEFAULT_CONSUMER_TIMEOUT)


def _number(conf: Any, key: str, default: float, *, zero: bool = False) -> float:
    """A setting in seconds: > 0 (>= 0 with ``zero``, where 0 turns the feature off)."""
    try:
        return float(checked_number(conf.get(key, default), what=key, strict=not zero))
    except (TypeError, ValueError) as exc:
        raise ResilienceConfigError(f"{exc} (seconds{'; 0: off' if zero else ''})") from None


def deadline_header(conf: Any) -> str | None:
    """``resilience_deadline_header``: a header name, or ``None`` (the default: no header).

    Raises ResilienceConfigError for anything but an HTTP token other than the headers
    the session sets itself or that carry credentials::

        >>> deadline_header({"resilience_deadline_header": "X-Request-Timeout"})
        'X-Request-Timeout'
    """
    key = "resilience_deadline_header"
    name = conf.get(key)
    if name is None:
        return None
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ResilienceConfigError(
            f"{key} must be an HTTP header name such as 'X-Request-Timeout' (letters, digits "
            f"and !#$%&'*+-.^_`|~, at most 64), or None; got {name!r}"
        )
    if name.lower() in _RESERVED_HEADERS:
        raise ResilienceConfigError(f"{key} cannot be {name!r}: that header has its own use")
    return name


def read_settings(app: Celery) -> Settings:
    """Resolve the settings of ``app``; raise ResilienceConfigError when they cannot work."""
    conf = app.conf
    url = _first_url(conf.get("resilience_backend_url"))
    ssl = conf.get("resilience_backend_use_ssl")
    if url is None:
        for candidate, its_ssl in (
            (_first_url(conf.broker_url), conf.get("broker_use_ssl")),
            (_first_url(conf.result_backend), conf.get("redis_backend_use_ssl")),
        ):
            if _is_redis(candidate):
                url = candidate
                ssl = ssl if ssl is not None else its_ssl
                break
    if ssl is not None and not isinstance(ssl, dict):
        ssl = None  # e.g. broker_use_ssl=True: the URL's own parameters say it all
    if url is None:
        raise ResilienceConfigError(
            "resilient tasks keep their shared state in Redis: set "
            "app.conf.resilience_backend_url = 'redis://host:6379/1' (the broker is "
            f"{maybe_sanitize_url(_first_url(conf.broker_url) or 'unset')!r} and the result "
            f"backend is {maybe_sanitize_url(_first_url(conf.result_backend) or 'unset')!r}, "
            "neither of them Redis)"
        )
    if not url.lower().startswith(SCHEMES):
        raise ResilienceConfigError(
            "resilience_backend_url must be a Redis URL "
            f"({', '.join(s.rstrip('/') for s in SCHEMES)}), got {maybe_sanitize_url(url)!r}"
        )
    guard = conf.get("resilience_duplicate_guard", "acks_late")
    if guard not in ("acks_late", "always"):
        raise ResilienceConfigError(
            f"resilience_duplicate_guard must be 'acks_late' or 'always', got {guard!r}"
        )
    fallback = conf.get("resilience_fallback", "allow")
    if fallback not in ("allow", "defer"):
        raise ResilienceConfigError(
            f"resilience_fallback must be 'allow' or 'defer', got {fallback!r}"
        )
    dead_max = conf.get("resilience_dead_letters_max", 10_000)
    if isinstance(dead_max, bool) or not isinstance(dead_max, int) or dead_max < 1:
        raise ResilienceConfigError(
            f"resilience_dead_letters_max must be an int >= 1, got {dead_max!r}"
        )
    ahead = conf.get("resilience_grants_ahead", MOST_AHEAD)
    if isinstance(ahead, bool) or not isinstance(ahead, int) or not 0 <= ahead <= 1000:
        raise ResilienceConfigError(
            f"resilience_grants_ahead must be an int from 0 to 1000, got {ahead!r}"
        )
    # checked whatever the broker, so that a bad value never waits for a move to RabbitMQ
    _number(conf, "resilience_consumer_timeout", DEFAULT_CONSUMER_TIMEOUT)
    try:
        keys = KeySpace(conf.get("resilience_key_prefix") or DEFAULT_PREFIX)
    except ValueError as exc:
        raise ResilienceConfigError(str(exc)) from None
    return Settings(
        backend_url=url,
        keys=keys,
        fallback="defer" if fallback == "defer" else "allow",
        attempt_lease=_number(conf, "resilience_attempt_lease", 60.0),
        redis_timeout=_number(conf, "resilience_redis_timeout", 2.0),
        dead_letters_max=dead_max,
        log_context=bool(conf.get("resilience_log_context", True)),
        visibility_timeout=redis_visibility_timeout(app),
        ssl=dict(ssl) if ssl else None,
        duplicate_guard="always" if guard == "always" else "acks_late",
        hold_max=_number(conf, "resilience_hold_max", 5.0, zero=True),
        grants_ahead=ahead,
        consumer_timeout=amqp_consumer_timeout(app),
        park_after=_number(conf, "resilience_park_after", 5.0, zero=True),
        park_lease=_number(conf, "resilience_park_lease", 30.0),
        park_poll=_number(conf, "resilience_park_poll", 1.0),
        publish_retry=_publish_retry(conf),
        deadline_header=deadline_header(conf),
    )
