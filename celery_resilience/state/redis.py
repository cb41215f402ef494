"""The shared state store: one Lua script per operation, time from Redis ``TIME``."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from redis.exceptions import NoScriptError

from celery_resilience.core.gates import (
    BreakerState,
    BreakerStatus,
    Denial,
    GateAnswer,
    GateAsk,
    KeysStatus,
    LimiterStatus,
    OutcomeReport,
    RecordAnswer,
    Transition,
)
from celery_resilience.core.keying import IDLE_TTL, OVERFLOW
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core.tripping import confidence_z
from celery_resilience.state.connect import is_cluster
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.scripts import SCRIPT_NAMES, ScriptBook

if TYPE_CHECKING:
    from celery_resilience.state.connect import Client

__all__ = ["RedisStore", "breaker_args", "limiter_args"]

#: A booked rate-limit slot may be used this early (seconds, at most).
SLOT_EARLY = 0.01
#: Grants may come this much closer together than one interval (as a share of it), so
#: that arrival jitter costs no slot; below 1, so that no window ever holds more than the
#: rate times its length plus the burst.
SLOT_SLACK = 0.9


def _now(res: dict[str, Any]) -> float:
    seconds, micros = res["now"]
    return int(seconds) + int(micros) / 1_000_000


@functools.lru_cache(maxsize=256)
def _breaker_args(policy: CircuitBreaker) -> dict[str, Any]:
    return breaker_args(policy)


@functools.lru_cache(maxsize=256)
def _limiter_args(policy: RateLimit) -> dict[str, Any]:
    return limiter_args(policy)


def breaker_args(policy: CircuitBreaker) -> dict[str, Any]:
    """The breaker's parameters as the scripts read them."""
    args = {
        "rate": policy.failure_rate,
        "min": policy.minimum_calls,
        "win": policy.window,
        "of": policy.open_for,
        "ofm": policy.max_open_for,
        "hoc": policy.half_open_calls,
        "lease": policy.lease,
        "z": confidence_z(policy.confidence),
        "k": policy.throttle or 0,
    }
    if policy.retry_budget is not None:
        args["rb"], args["rf"] = policy.retry_budget, policy.retry_floor
    return args


def limiter_args(policy: RateLimit) -> dict[str, Any]:
    """The limiter's parameters as the scripts read them (GCRA)."""
    interval = policy.interval
    return {
        "T": interval,
        "tau": (policy.capacity - 1) * interval,
        "early": min(SLOT_EARLY, interval / 4),
        "slack": SLOT_SLACK * interval,
    }


class RedisStore:
    """Breakers, limiters and attempt leases in Redis, shared by every worker.

    Each operation is one ``EVALSHA`` of a script registered once per client (redis-py
    re-loads it on ``NOSCRIPT``). Connection errors propagate: the caller decides what
    a missing Redis means (see :mod:`celery_resilience.state.fallback`).
    """

    def __init__(self, client: Client, keys: KeySpace | None = None) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self.cluster = is_cluster(client)
        self._scripts = ScriptBook(client, SCRIPT_NAMES)
        #: keys by (kind, policy name), built once (bounded by the policies in use)
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}

    def _run(self, script: str, keys: list[str], args: dict[str, Any]) -> dict[str, Any]:
        loaded = self._scripts[script]
        try:
            # straight to EVALSHA: the Script object's own call costs as much again
            raw = self.client.evalsha(loaded.sha, len(keys), *keys, json.dumps(args))
        except NoScriptError:  # a restarted or another server: the Script loads it
            raw = loaded(keys=keys, args=[json.dumps(args)])
        result: dict[str, Any] = json.loads(raw)
        return result

    def _breaker_keys(self, name: str) -> tuple[str, str, str]:
        found = self._keys.get(("b", name))
        if found is None:
            found = self._keys[("b", name)] = self.keys.breaker(name)
        return found  # type: ignore[return-value]  # "b" entries hold three keys

    def _one_key(self, kind: str, name: str) -> str:
        found = self._keys.get((kind, name))
        if found is None:
            key = self.keys.limiter(name) if kind == "l" else self.keys.concurrency(name)
            found = self._keys[(kind, name)] = (key,)
        return found[0]

    def _parts(
        self,
        breaker: CircuitBreaker | None,
        concurrency: ConcurrencyLimit | None,
        limiter: RateLimit | None,
        attempt_key: str | None,
    ) -> list[str]:
        keys: list[str] = []
        if breaker is not None:
            if breaker.bound_key is None:
                keys.extend(self._breaker_keys(breaker.name))
            else:  # not cached: one entry per key would grow without bound
                keys.extend(self.keys.breaker(breaker.name, breaker.bound_key))
                keys.extend(self.keys.breaker(breaker.name, OVERFLOW))
                keys.extend(self.keys.registry("breaker", breaker.name))
        for kind, policy in (("concurrency", concurrency), ("limiter", limiter)):
            if policy is None:
                continue
            if policy.bound_key is None:
                keys.append(self._one_key(kind[0], policy.name))
            else:
                keys.append(self.keys.keyed(kind, policy.name, policy.bound_key))
                keys.append(self.keys.keyed(kind, policy.name, OVERFLOW))
                keys.extend(self.keys.registry(kind, policy.name))
        if attempt_key is not None:
            keys.append(attempt_key)
        return keys

    def gate(self, ask: GateAsk) -> GateAnswer:
        """Ask every gate of one attempt (see ``lua/gate.lua``)."""
        if self.cluster and len(_split_ask(ask)) > 1:
            return self._gate_in_parts(ask)
        return self._gate(ask)

    def _gate_in_parts(self, ask: GateAsk) -> GateAnswer:
        """Redis Cluster: each gate's keys live in their own slot, so the gates are asked
        one after the other, and what the first ones granted is given back if a later one
        says no (a breaker probe, a concurrency slot, the attempt lease)."""
        granted: dict[str, GateAnswer] = {}
        transitions: list[Transition] = []
        for kind, part in _split_ask(ask):
            answer = self._gate(part)
            transitions.extend(answer.transitions)
            if not answer.allowed:
                probe = "breaker" in granted and granted["breaker"].probe
                undo = OutcomeReport(
                    holder=ask.holder,
                    breaker=ask.breaker if probe else None,
                    probe=probe,
                    concurrency=ask.concurrency if "concurrency" in granted else None,
                    attempt_key=ask.attempt_key if "attempt" in granted else None,
                    attempt_mark="released",
                )
                if not undo.empty:
                    self.record(undo)
                return replace(answer, transitions=tuple(transitions))
            granted[kind] = answer
        last = list(granted.values())[-1]
        breaker = granted.get("breaker", last)
        return replace(
            last,
            breaker_state=breaker.breaker_state,
            open_until=breaker.open_until,
            probe=breaker.probe,
            transitions=tuple(transitions),
        )

    def _gate(self, ask: GateAsk) -> GateAnswer:
        args: dict[str, Any] = {"h": ask.holder}
        if ask.breaker is not None:
            args["b"] = _breaker_args(ask.breaker)
            if ask.probe_lease is not None:
                args["b"] = {**args["b"], "lease": ask.probe_lease}
            if ask.throttle_draw is not None:
                args["u"] = ask.throttle_draw
            if ask.retry:
                args["r"] = True
        if ask.concurrency is not None:
            args["c"] = {
                "limit": ask.concurrency.limit,
                "lease": ask.concurrency_lease,
                "poll": ask.concurrency_poll,
            }
        if ask.limiter is not None:
            args["l"] = dict(_limiter_args(ask.limiter))
            if ask.booked_slot is not None:
                args["l"]["slot"] = ask.booked_slot
            if ask.limiter_max_wait is not None:
                args["l"]["max"] = ask.limiter_max_wait
            if ask.limiter_book:
                args["l"]["book"] = True
        if ask.ahead > 0:
            args["x"] = ask.ahead
        if ask.attempt_key is not None:
            args["a"] = {"lease": ask.attempt_lease}
            if ask.attempt_owner is not None:
                args["a"]["o"] = ask.attempt_owner
        _add_keys(args, b=ask.breaker, c=ask.concurrency, l=ask.limiter)
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
            shed=float(res.get("shed", 0.0)),
            retries=(int(res["retries"][0]), float(res["retries"][1]))
            if res.get("retries")
            else None,
            transitions=_transitions(ask.breaker, res.get("tr"), 0.0, 0, res.get("ov")),
            overflow=_overflow(res.get("ov")),
            ahead=tuple(float(t) for t in res.get("ah") or ()),
            ahead_until=float(res.get("au", 0.0)),
        )

    def drop_lost_lease(self, attempt_key: str, owner: str) -> bool:
        """Drop an attempt lease that ``owner``, a process known to be dead, still holds
        (see ``lua/attempt_lost.lua``); False when anyone else holds it, or nobody."""
        return bool(self._run("attempt_lost", [attempt_key], {"o": owner})["dropped"])

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report one attempt's outcome (see ``lua/record.lua``)."""
        parts = _split_report(report) if self.cluster else [report]
        if len(parts) <= 1:
            return self._record(report)
        answers = [self._record(part) for part in parts]
        breaker = next((a for a in answers if a.breaker_state is not None), answers[0])
        return replace(breaker, transitions=tuple(t for a in answers for t in a.transitions))

    def _record(self, report: OutcomeReport) -> RecordAnswer:
        args: dict[str, Any] = {"h": report.holder}
        if report.breaker is not None:
            args["b"] = {
                **_breaker_args(report.breaker),
                "outcome": report.breaker_outcome,
                "probe": report.probe,
            }
            if report.carried_successes:
                args["b"]["n"] = report.carried_successes
            if report.carried_sent:
                args["b"]["q"] = report.carried_sent
        if report.concurrency is not None:
            args["c"] = {}
        limiter = report.limiter if report.pause is not None else None
        if limiter is not None:
            args["l"] = {**_limiter_args(limiter), "pause": report.pause}
        if report.attempt_key is not None:
            args["a"] = {"ttl": report.mark_ttl, "mark": report.attempt_mark}
        _add_keys(args, b=report.breaker, c=report.concurrency, l=limiter)
        keys = self._parts(report.breaker, report.concurrency, limiter, report.attempt_key)
        res = self._run("record", keys, args)
        return RecordAnswer(
            now=_now(res),
            breaker_state=BreakerState(res["st"]) if res["st"] else None,
            open_until=float(res["ou"]),
            transitions=_transitions(
                report.breaker, res.get("tr"), float(res["rate"]), int(res["calls"]), res.get("ov")
            ),
        )

    def breaker(
        self,
        policy: CircuitBreaker,
        op: Literal["status", "open", "close", "reset"] = "status",
        *,
        ttl: float | None = None,
    ) -> BreakerStatus:
        """Read a breaker, force it open or closed, or reset it.

        With ``ttl`` (seconds), a change leaves the state hash expiring after that long
        (for a name no task declares); a gate or record of the breaker removes the expiry.
        """
        args: dict[str, Any] = {"op": op, "b": breaker_args(policy)}
        if ttl is not None:
            args["ttl"] = ttl
        res = self._run("breaker_admin", list(self.keys.breaker(policy.name)), args)
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
            shed=float(res.get("shed", 0.0)),
            first_attempts=int(res.get("first_attempts", 0)),
            retries=int(res.get("retries", 0)),
            transitions=_transitions(policy, res.get("tr"), rate, calls),
        )

    def limiter(
        self, policy: RateLimit | None, concurrency: ConcurrencyLimit | None, name: str
    ) -> LimiterStatus:
        """Read a rate limiter and the concurrency limit of the same name."""
        spacing = limiter_args(policy) if policy is not None else {"tau": 0.0, "T": 0.0}
        res = self._run(
            "limiter_status",
            [self.keys.limiter(name), self.keys.concurrency(name)],
            {"tau": spacing["tau"], "T": spacing["T"]},
        )
        return LimiterStatus(
            name=name,
            wait=float(res["wait"]),
            paused_until=float(res["paused_until"]),
            in_use=int(res["in_use"]),
            now=_now(res),
            exists=bool(res["exists"]),
        )

    def keys_status(self, kind: str, name: str, top: int = 10) -> KeysStatus:
        """Read the live keys of the keyed breaker (``kind`` "breaker"), rate limit
        ("limiter") or concurrency limit ("concurrency") ``name`` (see
        ``lua/keys_status.lua``)."""
        args: dict[str, Any] = {"idle": IDLE_TTL, "top": top}
        if kind == "breaker":
            args["bs"] = self.keys.keyed("breaker", name, None)
        res = self._run("keys_status", list(self.keys.registry(kind, name)), args)
        rows = res["top"] if isinstance(res["top"], list) else []
        return KeysStatus(
            kind=kind,
            name=name,
            live=int(res["live"]),
            overflow=int(res["overflow"]),
            top=tuple((str(k), int(n), float(t)) for k, n, t in rows),
            open=int(res["open"]),
            overflow_state=BreakerState(res["ovst"]) if res["ovst"] else None,
            now=_now(res),
        )


def _add_keys(
    args: dict[str, Any], **parts: CircuitBreaker | ConcurrencyLimit | RateLimit | None
) -> None:
    """Give each keyed part its key, ``max_keys`` and idle time (see ``own_key`` in
    ``lua/lib.lua``); the part's KEYS follow from :meth:`RedisStore._parts`."""
    for short, policy in parts.items():
        if policy is not None and policy.bound_key is not None:
            args[short] = {
                **args[short],
                "kk": policy.bound_key,
                "mk": policy.max_keys,
                "idle": IDLE_TTL,
            }


def _overflow(raw: object) -> frozenset[str]:
    """The parts ("b", "c", "l") that used their name's overflow state."""
    return frozenset(k for k, v in raw.items() if v) if isinstance(raw, dict) else frozenset()


def _transitions(
    breaker: CircuitBreaker | None,
    raw: object,
    rate: float,
    calls: int,
    over: object = None,
) -> tuple[Transition, ...]:
    if breaker is None or not isinstance(raw, list):
        return ()
    key = OVERFLOW if "b" in _overflow(over) else breaker.bound_key
    return tuple(
        Transition(breaker.name, BreakerState(old), BreakerState(new), rate, calls, key)
        for old, new in raw
    )


def _split_ask(ask: GateAsk) -> list[tuple[str, GateAsk]]:
    """One ask per gate, in the order of ``gate.lua``: attempt, breaker, concurrency, limit."""
    bare = GateAsk(holder=ask.holder)
    parts = []
    if ask.attempt_key is not None:
        part = replace(bare, attempt_key=ask.attempt_key, attempt_lease=ask.attempt_lease)
        parts.append(("attempt", replace(part, attempt_owner=ask.attempt_owner)))
    if ask.breaker is not None:
        part = replace(bare, breaker=ask.breaker, probe_lease=ask.probe_lease)
        parts.append(("breaker", replace(part, throttle_draw=ask.throttle_draw, retry=ask.retry)))
    if ask.concurrency is not None:
        parts.append(
            (
                "concurrency",
                replace(
                    bare,
                    concurrency=ask.concurrency,
                    concurrency_lease=ask.concurrency_lease,
                    concurrency_poll=ask.concurrency_poll,
                ),
            )
        )
    if ask.limiter is not None:
        parts.append(
            (
                "limiter",
                replace(
                    bare,
                    limiter=ask.limiter,
                    booked_slot=ask.booked_slot,
                    limiter_max_wait=ask.limiter_max_wait,
                    limiter_book=ask.limiter_book,
                ),
            )
        )
    return parts


def _split_report(report: OutcomeReport) -> list[OutcomeReport]:
    """One report per part, for Redis Cluster."""
    bare = OutcomeReport(holder=report.holder)
    parts = []
    if report.breaker is not None:
        parts.append(
            replace(
                bare,
                breaker=report.breaker,
                breaker_outcome=report.breaker_outcome,
                probe=report.probe,
                carried_successes=report.carried_successes,
                carried_sent=report.carried_sent,
            )
        )
    if report.concurrency is not None:
        parts.append(replace(bare, concurrency=report.concurrency))
    if report.limiter is not None and report.pause is not None:
        parts.append(replace(bare, limiter=report.limiter, pause=report.pause))
    if report.attempt_key is not None:
        parts.append(
            replace(
                bare,
                attempt_key=report.attempt_key,
                mark_ttl=report.mark_ttl,
                attempt_mark=report.attempt_mark,
            )
        )
    return parts
