"""What operators see: the breakers and limiters of an app, and their shared state.

Used by the ``celery -A proj resilience`` command and by the worker bootstep. A breaker
or limiter *exists* when a task of the app declares it or Redis holds state for it.
Reading never changes state, except that a breaker whose OPEN time is up moves to
HALF_OPEN, as at any gate; such transitions are sent as ``breaker_state_changed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_resilience import signals
from celery_resilience.core.gates import BreakerState, BreakerStatus, LimiterStatus
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core.tripping import retry_allowance
from celery_resilience.integration.task import resilient_tasks

if TYPE_CHECKING:
    from collections.abc import Iterable

    from celery import Celery

    from celery_resilience.state.connect import Client
    from celery_resilience.state.keys import KeySpace
    from celery_resilience.state.redis import RedisStore

__all__ = [
    "UNDECLARED_TTL",
    "Declared",
    "breaker_row",
    "declared",
    "keys_row",
    "limiter_row",
    "policy_for",
    "scan_names",
]

#: The window used to read a breaker no task declares: long enough that the read drops
#: nothing (the window's buckets expire on their own).
UNDECLARED_WINDOW = 10_000_000.0
_SCAN_COUNT = 1_000
#: Seconds the state hash of a breaker no task of the app declares lives after an admin
#: command changed it (one day): a mistyped name cannot leave state behind forever, while
#: a breaker that workers of another app use keeps its state (their gates remove the TTL).
UNDECLARED_TTL = 86_400.0


@dataclass
class Declared:
    """The breakers and limits the tasks of one app declare, by name."""

    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    rates: dict[str, RateLimit] = field(default_factory=dict)
    pools: dict[str, ConcurrencyLimit] = field(default_factory=dict)
    tasks: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def limiter_names(self) -> set[str]:
        """Names of rate and concurrency limits (one limiter row per name)."""
        return set(self.rates) | set(self.pools)

    def tasks_of(self, kind: str, name: str) -> list[str]:
        """Names of the tasks that declare the ``kind`` ("breaker" or "limiter") ``name``."""
        return self.tasks.get((kind, name), [])


def declared(app: Celery) -> Declared:
    """Collect the policies declared by the resilient tasks of ``app`` (first one wins)."""
    found = Declared()
    for name, task in resilient_tasks(app).items():
        opts = task.resilience_options()
        if opts.breaker is not None:
            found.breakers.setdefault(opts.breaker.name, opts.breaker)
            found.tasks.setdefault(("breaker", opts.breaker.name), []).append(name)
        limits: list[RateLimit | ConcurrencyLimit] = []
        if opts.limiter is not None:
            found.rates.setdefault(opts.limiter.name, opts.limiter)
            limits.append(opts.limiter)
        if opts.concurrency is not None:
            found.pools.setdefault(opts.concurrency.name, opts.concurrency)
            limits.append(opts.concurrency)
        for limit in limits:
            names = found.tasks.setdefault(("limiter", limit.name), [])
            if name not in names:
                names.append(name)
    return found


def scan_names(client: Client, keys: KeySpace, kinds: Iterable[str]) -> set[str]:
    """Names of every breaker (or limiter...) of ``kinds`` that Redis holds keys for."""
    names: set[str] = set()
    for kind in kinds:
        for raw in client.scan_iter(match=keys.pattern(kind), count=_SCAN_COUNT):
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            name = keys.name_of(key, kind)
            if name:
                names.add(name)
    return names


def policy_for(name: str, found: Declared) -> CircuitBreaker:
    """The declared breaker ``name``, or a stand-in to read one only Redis knows.

    Raises ``ValueError`` for a name no breaker can have (found in a foreign key).
    """
    policy = found.breakers.get(name)
    return policy if policy is not None else CircuitBreaker(name, window=UNDECLARED_WINDOW)


def breaker_status(store: RedisStore, policy: CircuitBreaker) -> BreakerStatus:
    """Read one breaker (announcing a transition the read made)."""
    status = store.breaker(policy, "status")
    signals.send_transitions(status.transitions)
    return status


def retry_budget_row(status: BreakerStatus, policy: CircuitBreaker | None) -> dict[str, Any] | None:
    """A breaker's retry budget now, as a JSON object (None when it has none)."""
    if policy is None or policy.retry_budget is None:
        return None
    allowed = retry_allowance(
        status.first_attempts,
        budget=policy.retry_budget,
        floor=policy.retry_floor,
        window=policy.window,
    )
    return {
        "ratio": policy.retry_budget,
        "floor": policy.retry_floor,
        "first_attempts": status.first_attempts,
        "retries": status.retries,
        "allowed": round(allowed, 2),
    }


def breaker_row(status: BreakerStatus, found: Declared) -> dict[str, Any]:
    """A breaker as a JSON object (``state`` is one of the :class:`BreakerState` values)."""
    opened = status.state is BreakerState.OPEN and status.open_until > 0
    return {
        "name": status.name,
        "state": status.state.value,
        "failure_rate": round(status.failure_rate, 4),
        "calls": status.calls,
        "failures": status.failures,
        "open_until": status.open_until if opened else None,
        "open_for": status.open_for,
        "probes": status.probes,
        "shed": round(status.shed, 4),
        "retry_budget": retry_budget_row(status, found.breakers.get(status.name)),
        "changed_at": status.changed_at or None,
        "declared": status.name in found.breakers,
        "tasks": found.tasks_of("breaker", status.name),
    }


def keys_row(
    store: RedisStore,
    kind: str,
    name: str,
    policy: CircuitBreaker | RateLimit | ConcurrencyLimit | None,
    *,
    top: int = 10,
) -> dict[str, Any] | None:
    """The live keys of a keyed breaker or limit as a JSON object; None when ``policy``
    has no key and Redis holds no live key for ``name``. ``kind``: "breaker", "limiter"
    (rate limit) or "concurrency". Keys are shown escaped."""
    status = store.keys_status(kind, name, top)
    keyed = policy is not None and policy.key is not None
    if not keyed and status.live == 0 and status.overflow == 0:
        return None
    row: dict[str, Any] = {
        "live": status.live,
        "max_keys": policy.max_keys if keyed and policy is not None else None,
        "overflow": status.overflow,
        "top": [{"key": k, "uses": n, "last_used": t} for k, n, t in status.top],
    }
    if kind == "breaker":
        row["open"] = status.open
        row["overflow_state"] = status.overflow_state.value if status.overflow_state else None
    return row


def limiter_status(store: RedisStore, name: str, found: Declared) -> LimiterStatus:
    """Read the rate limit and the concurrency limit called ``name``."""
    return store.limiter(found.rates.get(name), found.pools.get(name), name)


def limiter_row(status: LimiterStatus, found: Declared) -> dict[str, Any]:
    """A limiter (rate and concurrency limit of one name) as a JSON object."""
    rate = found.rates.get(status.name)
    pool = found.pools.get(status.name)
    return {
        "name": status.name,
        "rate": rate.rate if rate is not None else None,
        "burst": rate.capacity if rate is not None else None,
        "wait": round(status.wait, 4),
        "in_use": status.in_use,
        "concurrency": pool.limit if pool is not None else None,
        "paused_until": status.paused_until or None,
        "declared": status.name in found.limiter_names,
        "tasks": found.tasks_of("limiter", status.name),
    }
