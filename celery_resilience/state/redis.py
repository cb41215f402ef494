"""The shared state store: one Lua script per operation, time from Redis ``TIME``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from celery_resilience.policy import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.state.base import (
    BreakerState,
    BreakerStatus,
    Denial,
    GateAnswer,
    GateAsk,
    LimiterStatus,
    OutcomeReport,
    RecordAnswer,
    Transition,
)
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.scripts import SCRIPT_NAMES, script_source

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

__all__ = ["RedisStore", "breaker_args", "limiter_args"]

#: A booked rate-limit slot may be used this early (seconds, at most)...
SLOT_EARLY = 0.01
#: ...and this late, as a share of the emission interval: below 1, so that no window of
#: one interval ever holds two calls more than the limit allows.
SLOT_GRACE = 0.9


def _now(res: dict[str, Any]) -> float:
    seconds, micros = res["now"]
    return int(seconds) + int(micros) / 1_000_000


def breaker_args(policy: CircuitBreaker) -> dict[str, Any]:
    """The breaker's parameters as the scripts read them."""
    return {
        "rate": policy.failure_rate,
        "min": policy.minimum_calls,
        "win": policy.window,
        "of": policy.open_for,
        "ofm": policy.max_open_for,
        "hoc": policy.half_open_calls,
        "lease": policy.lease,
    }


def limiter_args(policy: RateLimit) -> dict[str, Any]:
    """The limiter's parameters as the scripts read them (GCRA)."""
    interval = policy.interval
    return {
        "T": interval,
        "tau": (policy.capacity - 1) * interval,
        "early": min(SLOT_EARLY, interval / 4),
        "grace": SLOT_GRACE * interval,
    }


class RedisStore:
    """Breakers, limiters and attempt leases in Redis, shared by every worker.

    Each operation is one ``EVALSHA`` of a script registered once per client (redis-py
    re-loads it on ``NOSCRIPT``). Connection errors propagate: the caller decides what
    a missing Redis means (see :mod:`celery_resilience.state.fallback`).
    """

    def __init__(self, client: redis.Redis, keys: KeySpace | None = None) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self._scripts: dict[str, Script] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    def _run(self, script: str, keys: list[str], args: dict[str, Any]) -> dict[str, Any]:
        raw = self._scripts[script](keys=keys, args=[json.dumps(args)])
        result: dict[str, Any] = json.loads(raw)
        return result

    def _parts(
        self,
        breaker: CircuitBreaker | None,
        concurrency: ConcurrencyLimit | None,
        limiter: RateLimit | None,
        attempt_key: str | None,
    ) -> list[str]:
        keys: list[str] = []
        if breaker is not None:
            keys.extend(self.keys.breaker(breaker.name))
        if concurrency is not None:
            keys.append(self.keys.concurrency(concurrency.name))
        if limiter is not None:
            keys.append(self.keys.limiter(limiter.name))
        if attempt_key is not None:
            keys.append(attempt_key)
        return keys

    def gate(self, ask: GateAsk) -> GateAnswer:
        """Ask every gate of one attempt (see ``lua/gate.lua``)."""
        args: dict[str, Any] = {"h": ask.holder}
        if ask.breaker is not None:
            args["b"] = breaker_args(ask.breaker)
        if ask.concurrency is not None:
            args["c"] = {
                "limit": ask.concurrency.limit,
                "lease": ask.concurrency_lease,
                "poll": ask.concurrency_poll,
            }
        if ask.limiter is not None:
            args["l"] = limiter_args(ask.limiter)
            if ask.booked_slot is not None:
                args["l"]["slot"] = ask.booked_slot
        if ask.attempt_key is not None:
            args["a"] = {"lease": ask.attempt_lease}
        keys = self._parts(ask.breaker, ask.concurrency, ask.limiter, ask.attempt_key)
        res = self._run("gate", keys, args)
        return GateAnswer(
            allowed=bool(res["ok"]),
            now=_now(res),
            wait=max(float(res["wait"]), 0.0),
            denial=Denial(res["why"]) if res["why"] else None,
            breaker_state=BreakerState(res["st"]) if res["st"] else None,
            open_until=float(res["ou"]),
            probe=bool(res["probe"]),
            slot=float(res["slot"]) if res["slot"] is not False else None,
            transitions=_transitions(ask.breaker, res.get("tr"), 0.0, 0),
        )

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report one attempt's outcome (see ``lua/record.lua``)."""
        args: dict[str, Any] = {"h": report.holder}
        if report.breaker is not None:
            args["b"] = {
                **breaker_args(report.breaker),
                "outcome": report.breaker_outcome,
                "probe": report.probe,
            }
        if report.concurrency is not None:
            args["c"] = {}
        limiter = report.limiter if report.pause is not None else None
        if limiter is not None:
            args["l"] = {**limiter_args(limiter), "pause": report.pause}
        if report.attempt_key is not None:
            args["a"] = {"done_ttl": report.done_ttl, "done": report.attempt_done}
        keys = self._parts(report.breaker, report.concurrency, limiter, report.attempt_key)
        res = self._run("record", keys, args)
        return RecordAnswer(
            now=_now(res),
            breaker_state=BreakerState(res["st"]) if res["st"] else None,
            open_until=float(res["ou"]),
            transitions=_transitions(
                report.breaker, res.get("tr"), float(res["rate"]), int(res["calls"])
            ),
        )

    def breaker(
        self, policy: CircuitBreaker, op: Literal["status", "open", "close", "reset"] = "status"
    ) -> BreakerStatus:
        """Read a breaker, force it open or closed, or reset it."""
        res = self._run(
            "breaker_admin",
            list(self.keys.breaker(policy.name)),
            {"op": op, "b": breaker_args(policy)},
        )
        rate, calls = float(res["rate"]), int(res["calls"])
        return BreakerStatus(
            name=policy.name,
            state=BreakerState(res["st"]),
            failure_rate=rate,
            calls=calls,
            failures=int(res["failures"]),
            open_until=float(res["ou"]),
            open_for=float(res["of"]),
            changed_at=float(res["ch"]),
            probes=int(res["probes"]),
            now=_now(res),
            exists=bool(res["exists"]),
            transitions=_transitions(policy, res.get("tr"), rate, calls),
        )

    def limiter(
        self, policy: RateLimit | None, concurrency: ConcurrencyLimit | None, name: str
    ) -> LimiterStatus:
        """Read a rate limiter and the concurrency limit of the same name."""
        tau = limiter_args(policy)["tau"] if policy is not None else 0.0
        res = self._run(
            "limiter_status",
            [self.keys.limiter(name), self.keys.concurrency(name)],
            {"tau": tau},
        )
        return LimiterStatus(
            name=name,
            wait=float(res["wait"]),
            paused_until=float(res["paused_until"]),
            in_use=int(res["in_use"]),
            now=_now(res),
            exists=bool(res["exists"]),
        )


def _transitions(
    breaker: CircuitBreaker | None, raw: object, rate: float, calls: int
) -> tuple[Transition, ...]:
    if breaker is None or not isinstance(raw, list):
        return ()
    return tuple(
        Transition(breaker.name, BreakerState(old), BreakerState(new), rate, calls)
        for old, new in raw
    )
