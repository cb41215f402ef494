"""The shared limits a task declares: a circuit breaker, a rate limit, a concurrency limit.

Each is a frozen value that only describes. The shared state it names lives in Redis
under its ``name``, so every task (on every worker) that declares one of the same name
shares one breaker, one limiter or one pool of slots. Each is checked when it is built: a
bad value raises ``ValueError`` naming the field.

Each takes ``key=``, a function of the task's ``(args, kwargs)``: one declaration then
gives one shared state per key (tenant, host, API key), at most ``max_keys`` of them live
per name; keys beyond that share one overflow state (see
:mod:`celery_resilience.core.keying`). ``bound_key`` is set by the worker, per attempt.
(A *policy*, in this package, is a named
set of task options in configuration: see :mod:`celery_resilience.core.policies`.)
"""

from __future__ import annotations

import math
import re
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from celery_resilience.core.keying import KEY_RE
from celery_resilience.core.validate import checked_number

if TYPE_CHECKING:
    from typing_extensions import Self

    from celery_resilience.core.keying import KeyFunction

__all__ = [
    "BODY_LEASE",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "RateLimit",
    "RetryExhausted",
    "parse_rate",
]

#: Seconds a lease held while a body runs lasts when the task has no time limit.
BODY_LEASE = 60.0

_MAX_NAME = 200
#: What a retry refused by a breaker's retry budget does.
RetryExhausted = Literal["wait", "give_up"]
_RATE_UNITS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
}
_RATE_RE = re.compile(r"^\s*(?P<count>[0-9]*\.?[0-9]+)\s*(?:/\s*(?P<unit>[A-Za-z]+))?\s*$")


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{kind}: name must be a str, not {type(name).__name__}")
    if not name or len(name) > _MAX_NAME:
        raise ValueError(f"{kind}: name must have 1 to {_MAX_NAME} characters, got {len(name)}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"{kind}: name {name!r} holds control characters")
    return name


def _check_keyed(kind: str, policy: Any) -> None:
    """``key`` callable or None; ``max_keys`` an int >= 1; ``bound_key`` only with a key."""
    if policy.key is not None and not callable(policy.key):
        raise ValueError(
            f"{kind}: key must be a function of (args, kwargs), not {type(policy.key).__name__}"
        )
    max_keys = policy.max_keys
    if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
        raise ValueError(f"{kind}: max_keys must be an int >= 1, got {max_keys!r}")
    if policy.bound_key is not None and not (
        isinstance(policy.bound_key, str)
        and policy.key is not None
        and KEY_RE.fullmatch(policy.bound_key)
    ):
        raise ValueError(f"{kind}: bound_key is set by the worker for a policy with a key")


class _Keyed:
    """What the three limits share about keys (see :mod:`celery_resilience.core.keying`)."""

    __slots__ = ()
    key: KeyFunction | None
    bound_key: str | None

    @property
    def keyed(self) -> bool:
        """True when the policy has one shared state per key."""
        return self.key is not None

    def bind(self, key: str) -> Self:
        """This policy for one key's state (``key``: text from
        :func:`~celery_resilience.core.keying.key_text`)."""
        return replace(self, bound_key=key)  # type: ignore[type-var]  # a dataclass


def _check_positive(kind: str, field_name: str, value: object, *, integer: bool = False) -> None:
    if integer:
        checked_number(value, what=f"{kind}: {field_name}", integer=True)
    else:
        checked_number(value, what=f"{kind}: {field_name}")


@dataclass(frozen=True, slots=True)
class CircuitBreaker(_Keyed):
    """A circuit breaker shared by every task (on every worker) that names it.

    CLOSED → OPEN when, within the last ``window`` seconds, at least ``minimum_calls``
    outcomes were recorded and the share of transient failures is ≥ ``failure_rate`` with
    ``confidence`` (its lower Wilson score bound reaches ``failure_rate``; a window of
    failures only needs no more than ``minimum_calls``): a few unlucky calls to an
    upstream that fails now and then do not open it, an outage does at once.
    OPEN lasts ``open_for`` seconds, doubling on each consecutive re-open up to
    ``open_for_max`` (``None``: the same as ``open_for``, so it does not grow). Then
    HALF_OPEN lets ``half_open_calls`` probes through, cluster-wide; successful probes
    close the breaker, a failed probe re-opens it. A probe holds its slot for as long as
    its body may run (see :meth:`lease_for`), so that a slow probe still decides and no
    other probe goes meanwhile; a killed worker's probe slot comes back when it runs out.

    While CLOSED, calls beyond a sending ratio times those the upstream accepted lately
    are shed locally (deferred, never failed): adaptive throttling, so that a degraded
    upstream gets about the work it can do and the retries do not swamp it. The ratio is
    ``throttle`` while the upstream's accepts grow with the calls sent, and comes down
    toward 1 when they do not (it is at capacity; then a mixed window does not open the
    breaker either). ``None`` turns it off; see :mod:`celery_resilience.core.tripping`.

    ``retry_budget`` (off by default) bounds retries: while CLOSED, the retries sent over
    the window may number at most ``retry_budget`` times the first attempts sent (0.2:
    retries add at most 20 % to the upstream's load), or ``retry_floor`` a second, if
    more. A retry beyond it waits, without spending ``max_retries`` (``retry_exhausted=
    "wait"``, bounded by the task's deadline), or gives up (``"give_up"``).

    The defaults are chosen by measurement (see the README): a 20 s outage costs the
    upstream about ten calls, and work resumes within seconds of recovery.

    ```python
    CircuitBreaker("payments", failure_rate=0.5, minimum_calls=10, open_for=15.0)
    ```
    """

    name: str
    _: KW_ONLY
    failure_rate: float = 0.5
    minimum_calls: int = 5
    window: float = 10.0
    open_for: float = 5.0
    open_for_max: float | None = None
    half_open_calls: int = 1
    probe_lease: float | None = None
    confidence: float = 0.95
    throttle: float | None = 1.8
    retry_budget: float | None = None
    retry_floor: float = 1.0
    retry_exhausted: RetryExhausted = "wait"
    key: KeyFunction | None = None
    max_keys: int = 1000
    bound_key: str | None = None

    def __post_init__(self) -> None:
        kind = "CircuitBreaker"
        _check_name(kind, self.name)
        _check_keyed(kind, self)
        _check_positive(kind, "failure_rate", self.failure_rate)
        if self.failure_rate > 1:
            raise ValueError(f"{kind}: failure_rate must lie in (0, 1], got {self.failure_rate!r}")
        _check_positive(kind, "minimum_calls", self.minimum_calls, integer=True)
        _check_positive(kind, "window", self.window)
        _check_positive(kind, "open_for", self.open_for)
        if self.open_for_max is not None:
            _check_positive(kind, "open_for_max", self.open_for_max)
            if self.open_for_max < self.open_for:
                raise ValueError(
                    f"{kind}: open_for_max ({self.open_for_max!r}) must be >= "
                    f"open_for ({self.open_for!r})"
                )
        _check_positive(kind, "half_open_calls", self.half_open_calls, integer=True)
        if self.probe_lease is not None:
            _check_positive(kind, "probe_lease", self.probe_lease)
        _check_positive(kind, "confidence", self.confidence)
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"{kind}: confidence must lie in [0.5, 1), got {self.confidence!r}")
        if self.throttle is not None:
            _check_positive(kind, "throttle", self.throttle)
            if self.throttle < 1:
                raise ValueError(
                    f"{kind}: throttle must be >= 1 (calls sent per call accepted) or None, "
                    f"got {self.throttle!r}"
                )
        if self.retry_budget is not None:
            _check_positive(kind, "retry_budget", self.retry_budget)
        checked_number(self.retry_floor, what=f"{kind}: retry_floor", strict=False)
        if self.retry_exhausted not in ("wait", "give_up"):
            raise ValueError(
                f"{kind}: retry_exhausted must be 'wait' or 'give_up', got {self.retry_exhausted!r}"
            )

    @property
    def max_open_for(self) -> float:
        """The longest an OPEN period may last."""
        return self.open_for if self.open_for_max is None else self.open_for_max

    @property
    def lease(self) -> float:
        """The shortest a half-open probe holds its slot (``probe_lease``, else ``open_for``)."""
        return self.open_for if self.probe_lease is None else self.probe_lease

    def lease_for(self, time_limit: float | None) -> float:
        """How long a probe of a task with this time limit (the longer of hard and soft)
        holds its slot: the time limit plus 5 s, never less than :attr:`lease`; without a
        time limit, ``probe_lease`` when given, else the longer of ``open_for`` and
        :data:`BODY_LEASE` (60 s)."""
        if time_limit is not None:
            return max(self.lease, time_limit + 5.0)
        if self.probe_lease is not None:
            return self.probe_lease
        return max(self.open_for, BODY_LEASE)


def parse_rate(rate: object) -> tuple[float, float]:
    """Parse a Celery-style rate into ``(count, period_seconds)``.

    >>> parse_rate("50/s"), parse_rate("600/m"), parse_rate("0.5/s"), parse_rate("10")
    ((50.0, 1.0), (600.0, 60.0), (0.5, 1.0), (10.0, 1.0))
    """
    if not isinstance(rate, str):
        raise ValueError(  # noqa: TRY004 - a bad rate is a bad value, as Celery has it
            f"RateLimit: rate must be a str such as '50/s', not {type(rate).__name__}"
        )
    match = _RATE_RE.match(rate)
    unit = (match.group("unit") or "s").lower() if match else ""
    if match is None or unit not in _RATE_UNITS:
        raise ValueError(
            f"RateLimit: rate {rate!r} is not of the form '<count>/<s|m|h>', e.g. '50/s'"
        )
    count = float(match.group("count"))
    if count <= 0 or not math.isfinite(count):
        raise ValueError(f"RateLimit: rate {rate!r} must allow more than 0 calls")
    return count, _RATE_UNITS[unit]


@dataclass(frozen=True, slots=True)
class RateLimit(_Keyed):
    """A rate limit shared, exactly, by every task (on every worker) that names it.

    ``rate`` is written as Celery writes it: ``"50/s"``, ``"600/m"``, ``"1000/h"``,
    ``"0.5/s"``. ``burst`` is how many calls may go back to back after a quiet spell
    (``None``: 1, i.e. strict spacing at the rate).

    ```python
    RateLimit("crm", "10/s")
    RateLimit("search", "600/m", burst=20)
    ```
    """

    name: str
    rate: str
    _: KW_ONLY
    burst: int | None = None
    key: KeyFunction | None = None
    max_keys: int = 1000
    bound_key: str | None = None
    count: float = field(init=False, repr=False, compare=False)
    period: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("RateLimit", self.name)
        _check_keyed("RateLimit", self)
        count, period = parse_rate(self.rate)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "period", period)
        if self.burst is not None:
            if isinstance(self.burst, bool) or not isinstance(self.burst, int):
                raise ValueError(
                    f"RateLimit: burst must be an int >= 1, not {type(self.burst).__name__}"
                )
            if self.burst < 1:
                raise ValueError(f"RateLimit: burst must be >= 1, got {self.burst!r}")

    @property
    def interval(self) -> float:
        """Seconds between two calls at the steady rate (GCRA's emission interval)."""
        return self.period / self.count

    @property
    def capacity(self) -> int:
        """How many calls may go back to back (``burst``, at least 1)."""
        return 1 if self.burst is None else self.burst


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit(_Keyed):
    """At most ``limit`` task bodies in flight against ``name``, across the cluster.

    Each running body holds a slot, released on every outcome. A slot is a lease of
    ``lease`` seconds, so a worker that dies cannot keep it: set ``lease`` above the
    longest body you expect (``None``: the task's ``time_limit`` plus 5 s, else 60 s).

    ```python
    ConcurrencyLimit("reports", 3, lease=120)
    ```
    """

    name: str
    limit: int
    _: KW_ONLY
    lease: float | None = None
    key: KeyFunction | None = None
    max_keys: int = 1000
    bound_key: str | None = None

    def __post_init__(self) -> None:
        _check_name("ConcurrencyLimit", self.name)
        _check_keyed("ConcurrencyLimit", self)
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise ValueError(  # noqa: TRY004 - one error type for every bad limit
                f"ConcurrencyLimit: limit must be an int >= 1, not {type(self.limit).__name__}"
            )
        if self.limit < 1:
            raise ValueError(f"ConcurrencyLimit: limit must be >= 1, got {self.limit!r}")
        if self.lease is not None:
            _check_positive("ConcurrencyLimit", "lease", self.lease)
