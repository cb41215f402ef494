"""The same gates in one process's memory: the fallback when Redis cannot be reached.

Semantics match the Lua scripts exactly (the test suite drives both side by side), but
the state is this process's alone and time is the local clock.

``_gate`` and ``_record`` are long on purpose: each mirrors its script (``gate.lua``,
``record.lua``) step by step, in the same order, so that the two read side by side.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Union

from celery_resilience.core import clock
from celery_resilience.core.gates import (
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
from celery_resilience.core.keying import IDLE_TTL, OVERFLOW
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core.tripping import (
    Bucket,
    Probe,
    confidence_z,
    held_closed,
    judged_requests,
    probe_of,
    probe_ratio,
    retry_allowance,
    sending_ratio,
    shed_call,
    shed_share,
    trips,
)
from celery_resilience.state.redis import limiter_args

__all__ = ["MemoryStore"]

_WINDOW_BUCKETS = 10
#: Adaptive throttling judges the last this many buckets of the window.
THROTTLE_BUCKETS = 3
#: The fallback forgets expired attempt leases once it holds this many.
_SWEEP_AT = 10_000


def _bucket_number(start: float, width: float) -> int:
    """A bucket's number: its start over its width, rounded (the quotient is near a whole
    number)."""
    return math.floor(start / width + 0.5)


_KeyedPolicy = Union[CircuitBreaker, ConcurrencyLimit, RateLimit]  # noqa: UP007 - a runtime alias on 3.10


def _parts_of(ask: GateAsk) -> dict[str, _KeyedPolicy | None]:
    return {"breaker": ask.breaker, "concurrency": ask.concurrency, "limiter": ask.limiter}


def _transition_key(breaker: CircuitBreaker | None, over: frozenset[str]) -> str | None:
    """The key a breaker's transitions name (as ``_transitions`` in redis.py)."""
    if breaker is None:
        return None
    return OVERFLOW if "b" in over else breaker.bound_key


def _stored(value: float) -> float:
    """A time as Redis keeps it (``%.6f``), so both stores decide on the same numbers."""
    return float(f"{value:.6f}")


@dataclass
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    open_until: float = 0.0
    open_for: float | None = None
    changed_at: float = 0.0
    half_open_successes: int = 0
    window: dict[tuple[int, str], int] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)
    shed: float = 0.0  # the share adaptive throttling sheds, as last stored ("tp")
    owed: float = 0.0  # what the calls so far owe to shedding ("so")

    def store_shed(self, new: float) -> None:
        """Keep a new share when it changed enough (``store_shed`` in lib.lua); nothing is
        owed to shedding once it stops."""
        if new == 0 and self.shed != 0:
            self.owed = 0.0
        if (new == 0) != (self.shed == 0) or abs(new - self.shed) > 0.01:
            self.shed = float(f"{new:.4f}")


class _Totals(NamedTuple):
    """A breaker window's counts: successes and failures of the window; requests and
    successes of its last :data:`THROTTLE_BUCKETS` buckets; first attempts and retries of
    the window; the throttle's probe; calls of the last buckets sent and not accepted; the
    requests those buckets would hold at the rate of the last one and the current one."""

    succ: int
    fail: int
    req: int
    recent: int
    firsts: int
    retries: int
    probe: Probe
    rejected: int
    at_recent_rate: float


@dataclass
class _Limiter:
    tat: float = 0.0  # bookings
    atat: float = 0.0  # grants
    paused_until: float = 0.0


class MemoryStore:
    """Breakers, limiters and leases of this process only. Thread-safe."""

    def __init__(self, now: Callable[[], float] = clock.now) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}
        self._limiters: dict[str, _Limiter] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._attempts: dict[str, tuple[str, float]] = {}
        #: (kind, name) -> live key -> last use; and -> key or OVERFLOW -> uses
        self._registry: dict[tuple[str, str], dict[str, float]] = {}
        self._uses: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}
        #: keyed breaker state -> last use (its idle TTL)
        self._touched: dict[str, float] = {}

    # -- per-key state, mirroring own_key and pick_keys in lib.lua -------------------------

    def _own_key(self, kind: str, policy: _KeyedPolicy, now: float, *, at_gate: bool) -> bool:
        name, key = policy.name, policy.bound_key
        assert key is not None
        live = self._registry.setdefault((kind, name), {})
        stale = sorted((t, k) for k, t in live.items() if t < _stored(now - IDLE_TTL))[:100]
        touched, uses = self._uses.get((kind, name), (0.0, {}))
        if touched + IDLE_TTL <= now:
            uses = {}
        for _, old in stale:
            del live[old]
            uses.pop(old, None)
            sid = f"{name}\0{old}"
            window = getattr(policy, "window", 0.0)
            if kind == "breaker" and self._touched.get(sid, now) + 2 * window <= now:
                self._breakers.pop(sid, None)  # its window has expired too: nothing is left
                self._touched.pop(sid, None)
        own = key in live
        if at_gate:
            own = own or len(live) < policy.max_keys
            if own:
                live[key] = _stored(now)
            counted = key if own else OVERFLOW
            uses[counted] = uses.get(counted, 0) + 1
            touched = now
        elif own:
            live[key] = _stored(now)
        self._uses[(kind, name)] = (touched, uses)
        return own

    def _pick(
        self, parts: dict[str, _KeyedPolicy | None], now: float, *, at_gate: bool
    ) -> tuple[dict[str, str], frozenset[str]]:
        """The state each part uses (its name, a key's or the overflow state's id) and
        the parts that used the overflow state."""
        ids: dict[str, str] = {}
        over: set[str] = set()
        for kind, policy in parts.items():
            if policy is None:
                continue
            if policy.bound_key is None:
                ids[kind] = policy.name
                continue
            if self._own_key(kind, policy, now, at_gate=at_gate):
                ids[kind] = f"{policy.name}\0{policy.bound_key}"
            else:
                ids[kind] = f"{policy.name}\0{OVERFLOW}"
                over.add(kind[0])
            if kind == "breaker":
                self._expire_breaker(ids[kind], now)
        return ids, frozenset(over)

    def _expire_breaker(self, sid: str, now: float) -> None:
        """A keyed (or overflow) breaker's state lasts IDLE_TTL after its last use, as its
        state hash in Redis; its window and probes expire on their own."""
        old = self._breakers.get(sid)
        touched = self._touched.get(sid)
        if old is not None and touched is not None and touched + IDLE_TTL <= now:
            self._breakers[sid] = _Breaker(window=old.window, probes=old.probes)
        self._touched[sid] = now

    # -- helpers mirroring lib.lua -------------------------------------------------------

    @staticmethod
    def _odd_now(policy: CircuitBreaker, now: float) -> bool:
        return math.floor(now * 1000 / (policy.window * 100)) % 2 == 1

    @staticmethod
    def _width_ms(policy: CircuitBreaker) -> float:
        return policy.window * (1000 / _WINDOW_BUCKETS)

    def _totals(
        self, br: _Breaker, policy: CircuitBreaker, now: float, *, keep: bool = False
    ) -> _Totals:
        """The window's counts (``window_totals`` in lib.lua)."""
        horizon = (now - policy.window) * 1000
        width = self._width_ms(policy)
        recent_from = now * 1000 - THROTTLE_BUCKETS * width
        current = math.floor(now * 1000 / width) * width
        first = current
        sent_in: dict[int, list[int]] = {}  # finished buckets' [sent, accepted], by number
        shed_in: set[int] = set()  # numbers of the finished buckets in which the throttle shed
        succ = fail = req = recent = firsts = retries = sent = fresh = 0
        for key in list(br.window):
            start, kind = key
            n = br.window[key]
            if start + width <= horizon:
                if not keep:
                    del br.window[key]
            elif kind in ("s", "f"):
                if kind == "s":
                    succ += n
                    recent += n if start + width > recent_from else 0
                else:
                    fail += n
                if start < current:
                    first = min(first, start)
                    counts = sent_in.setdefault(_bucket_number(start, width), [0, 0])
                    counts[0] += n
                    counts[1] += n if kind == "s" else 0
            elif kind == "a":
                firsts += n
            elif kind == "r":
                retries += n
            else:
                if kind == "x" and start < current and n > 0:
                    shed_in.add(_bucket_number(start, width))
                if start + width > recent_from:
                    req += n
                    fresh += n if start >= current - width else 0
                    sent += n if kind == "q" else 0
        finished = math.floor((current - first) / width + 0.5)
        half = finished // 2
        odd = even = half
        if finished % 2 == 1:
            if _bucket_number(first, width) % 2 == 1:
                odd += 1
            else:
                even += 1
        finished_buckets = []
        for number in sent_in.keys() | shed_in:
            calls, accepted = sent_in.get(number, (0, 0))
            finished_buckets.append(Bucket(number, calls, accepted, number in shed_in))
        found = probe_of(finished_buckets, odd, even)
        rejected = max(0, sent - recent)
        elapsed = now * 1000 - current
        at_rate = fresh * (THROTTLE_BUCKETS * width + elapsed) / (width + elapsed)
        return _Totals(succ, fail, req, recent, firsts, retries, found, rejected, at_rate)

    def _add(
        self, br: _Breaker, policy: CircuitBreaker, now: float, kind: str, count: int = 1
    ) -> None:
        width = self._width_ms(policy)
        start = int(math.floor(now * 1000 / width) * width)
        br.window[(start, kind)] = br.window.get((start, kind), 0) + count

    def _phase(
        self, br: _Breaker, policy: CircuitBreaker, now: float, out: list[Transition]
    ) -> None:
        if br.state is BreakerState.OPEN and now >= br.open_until:
            br.state = BreakerState.HALF_OPEN
            br.changed_at = _stored(now)
            br.half_open_successes = 0
            out.append(Transition(policy.name, BreakerState.OPEN, BreakerState.HALF_OPEN, 0.0, 0))

    def _attempt_live(self, key: str, now: float) -> tuple[str, float] | None:
        held = self._attempts.get(key)
        if held is not None and now >= held[1]:
            del self._attempts[key]
            return None
        return held

    # -- the protocol ----------------------------------------------------------------------

    def gate(self, ask: GateAsk) -> GateAnswer:
        """Ask every gate of one attempt at once (the semantics of ``gate.lua``)."""
        with self._lock:
            now = self._now()
            ids, over = self._pick(_parts_of(ask), now, at_gate=True)
            answer = self._gate(ask, now, ids)
            key = _transition_key(ask.breaker, over)
            return replace(
                answer,
                overflow=over,
                transitions=tuple(replace(t, key=key) for t in answer.transitions),
            )

    def _gate(self, ask: GateAsk, now: float, ids: dict[str, str]) -> GateAnswer:
        transitions: list[Transition] = []

        def deny(denial: Denial, wait: float, **extra: object) -> GateAnswer:
            return GateAnswer(
                allowed=False,
                now=now,
                wait=max(wait, 0.0),
                denial=denial,
                transitions=tuple(transitions),
                **extra,  # type: ignore[arg-type]
            )

        if ask.attempt_key is not None:
            held = self._attempt_live(ask.attempt_key, now)
            if held is not None and held[0] in ("done", "retried"):
                return deny(Denial(held[0]), 0.0)
            if held is not None:
                return deny(Denial.RUNNING, held[1] - now)

        state: BreakerState | None = None
        probe = False
        asked = budgeted = False
        br: _Breaker | None = None
        if ask.breaker is not None:
            policy = ask.breaker
            br = self._breakers.setdefault(ids["breaker"], _Breaker())
            self._phase(br, policy, now, transitions)
            state = br.state
            if state is BreakerState.OPEN:
                return deny(
                    Denial.BREAKER_OPEN,
                    br.open_until - now,
                    breaker_state=state,
                    open_until=br.open_until,
                )
            if state is BreakerState.FORCED_OPEN:
                return deny(Denial.BREAKER_OPEN, policy.open_for, breaker_state=state)
            if state is BreakerState.HALF_OPEN:
                br.probes = {h: t for h, t in br.probes.items() if t > _stored(now)}
                if len(br.probes) < policy.half_open_calls:
                    lease = policy.lease if ask.probe_lease is None else ask.probe_lease
                    br.probes[ask.holder] = _stored(now + lease)
                    probe = True
                else:
                    return deny(
                        Denial.BREAKER_HALF_OPEN,
                        min(br.probes.values()) - now,
                        breaker_state=state,
                    )
            elif state is BreakerState.CLOSED:
                asked = policy.throttle is not None
                budgeted = policy.retry_budget is not None
                judged = budgeted and ask.retry
                totals = (
                    self._totals(br, policy, now) if judged or (asked and br.shed > 0) else None
                )
                if judged and totals is not None and policy.retry_budget is not None:
                    allowed = retry_allowance(
                        totals.firsts,
                        budget=policy.retry_budget,
                        floor=policy.retry_floor,
                        window=policy.window,
                    )
                    if totals.retries >= allowed:
                        return deny(
                            Denial.RETRY_BUDGET,
                            policy.window / _WINDOW_BUCKETS,
                            breaker_state=state,
                            retries=(totals.retries, allowed),
                        )
                if asked and totals is not None and br.shed > 0:
                    ratio = sending_ratio(totals.probe, policy.throttle)
                    req = judged_requests(totals.req, totals.at_recent_rate, ratio, policy.throttle)
                    counts = (req + 1, totals.recent, totals.rejected)
                    lowest = probe_ratio(ratio, odd=False)
                    br.store_shed(shed_share(*counts, lowest, policy.minimum_calls))
                    here = probe_ratio(ratio, self._odd_now(policy, now))
                    share = shed_share(*counts, here, policy.minimum_calls)
                    if ask.throttle_draw is not None:
                        shed, br.owed = shed_call(share, br.owed, ask.throttle_draw)
                        if shed:
                            self._add(br, policy, now, "x")
                            return deny(
                                Denial.THROTTLED,
                                policy.window / _WINDOW_BUCKETS,
                                breaker_state=state,
                                shed=share,
                            )

        def undo() -> None:
            if probe and br is not None:
                br.probes.pop(ask.holder, None)

        slots: dict[str, float] | None = None
        if ask.concurrency is not None:
            slots = self._slots.setdefault(ids["concurrency"], {})
            for holder in [h for h, t in slots.items() if t <= _stored(now)]:
                del slots[holder]
            if ask.holder in slots or len(slots) < ask.concurrency.limit:
                slots[ask.holder] = _stored(now + ask.concurrency_lease)
            else:
                undo()
                wait = min(max(min(slots.values()) - now, 0.0), ask.concurrency_poll)
                return deny(Denial.CONCURRENCY_FULL, wait, breaker_state=state)

        if ask.limiter is not None:
            args = limiter_args(ask.limiter)
            lim = self._limiters.setdefault(ids["limiter"], _Limiter())
            granted = False
            slot: float | None = None
            wait = 0.0
            booked = ask.booked_slot
            spaced_at = lim.atat - args["tau"] - args["slack"]
            if booked is not None and now >= lim.paused_until:
                if now < booked - args["early"]:
                    slot, wait = booked, booked - now
                elif now >= spaced_at:
                    granted = True
                else:
                    slot, wait = booked, spaced_at - now
            if not granted and slot is None:
                t = max(lim.tat, now)
                allow_at = max(t - args["tau"], spaced_at)
                if now >= allow_at:
                    if ask.limiter_book:  # a reservation: granted when its attempt comes
                        slot = _stored(now)
                    else:
                        granted = True
                    lim.tat = _stored(t + args["T"])
                elif ask.limiter_max_wait is not None and allow_at - now > ask.limiter_max_wait:
                    wait = allow_at - now  # nothing is booked
                else:
                    slot, wait = _stored(allow_at), allow_at - now
                    lim.tat = _stored(max(t, allow_at + args["tau"]) + args["T"])
            if granted:
                lim.atat = _stored(max(lim.atat, now) + args["T"])
            else:
                undo()
                if slots is not None:
                    slots.pop(ask.holder, None)
                return deny(Denial.RATE_LIMITED, wait, breaker_state=state, slot=slot)

        if ask.attempt_key is not None:
            self._attempts[ask.attempt_key] = ("run", _stored(now + ask.attempt_lease))
            if len(self._attempts) > _SWEEP_AT:
                self._attempts = {k: v for k, v in self._attempts.items() if now < v[1]}
        if asked and br is not None and ask.breaker is not None:
            self._add(br, ask.breaker, now, "q")
        if budgeted and br is not None and ask.breaker is not None:
            self._add(br, ask.breaker, now, "r" if ask.retry else "a")
        return GateAnswer(
            allowed=True,
            now=now,
            breaker_state=state,
            probe=probe,
            transitions=tuple(transitions),
        )

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report one attempt's outcome (the semantics of ``record.lua``)."""
        with self._lock:
            now = self._now()
            limiter = report.limiter if report.pause is not None else None
            parts = {"breaker": report.breaker, "concurrency": report.concurrency}
            ids, over = self._pick({**parts, "limiter": limiter}, now, at_gate=False)
            answer = self._record(report, now, ids)
            key = _transition_key(report.breaker, over)
            return replace(
                answer, transitions=tuple(replace(t, key=key) for t in answer.transitions)
            )

    def _record(self, report: OutcomeReport, now: float, ids: dict[str, str]) -> RecordAnswer:
        transitions: list[Transition] = []
        state: BreakerState | None = None
        open_until = 0.0
        if report.breaker is not None:
            policy = report.breaker
            br = self._breakers.setdefault(ids["breaker"], _Breaker())
            self._phase(br, policy, now, transitions)
            outcome = report.breaker_outcome

            def open_(old: BreakerState, open_for: float, rate: float, calls: int) -> None:
                br.state = BreakerState.OPEN
                br.open_until = _stored(now + open_for)
                br.open_for = _stored(open_for)
                br.changed_at = _stored(now)
                br.half_open_successes = 0
                br.probes.clear()
                br.shed = 0.0
                br.owed = 0.0
                transitions.append(Transition(policy.name, old, BreakerState.OPEN, rate, calls))

            if br.state in (
                BreakerState.CLOSED,
                BreakerState.FORCED_OPEN,
                BreakerState.FORCED_CLOSED,
            ):
                if report.carried_successes > 0:
                    self._add(br, policy, now, "s", report.carried_successes)
                if report.carried_sent > 0 and br.state is BreakerState.CLOSED and policy.throttle:
                    self._add(br, policy, now, "q", report.carried_sent)
                if outcome != "neutral":
                    self._add(br, policy, now, "s" if outcome == "success" else "f")
                succ, fail, req, recent, _, _, probe, rejected, at_rate = self._totals(
                    br, policy, now
                )
                calls = succ + fail
                rate = fail / calls if calls else 0.0
                if (
                    br.state is BreakerState.CLOSED
                    and outcome == "failure"
                    and trips(
                        fail,
                        calls,
                        failure_rate=policy.failure_rate,
                        minimum_calls=policy.minimum_calls,
                        z=confidence_z(policy.confidence),
                    )
                    and not held_closed(fail, calls, recent, probe, policy.throttle)
                ):
                    open_(BreakerState.CLOSED, policy.open_for, rate, calls)
                elif br.state is BreakerState.CLOSED:
                    ratio = sending_ratio(probe, policy.throttle)
                    judged = judged_requests(req, at_rate, ratio, policy.throttle)
                    lowest = probe_ratio(ratio, odd=False)
                    br.store_shed(
                        shed_share(judged, recent, rejected, lowest, policy.minimum_calls)
                    )
            elif (
                br.state is BreakerState.HALF_OPEN
                and report.probe
                and br.probes.pop(report.holder, None) is not None
            ):
                if outcome == "failure":
                    last = br.open_for if br.open_for is not None else policy.open_for
                    longer = min(max(last * 2, policy.open_for), policy.max_open_for)
                    open_(BreakerState.HALF_OPEN, longer, 0.0, 0)
                elif outcome == "success":
                    br.half_open_successes += 1
                    if br.half_open_successes >= policy.half_open_calls:
                        br.state = BreakerState.CLOSED
                        br.changed_at = _stored(now)
                        br.open_for = _stored(policy.open_for)
                        br.half_open_successes = 0
                        br.window.clear()
                        br.probes.clear()
                        br.shed = 0.0
                        br.owed = 0.0
                        transitions.append(
                            Transition(
                                policy.name, BreakerState.HALF_OPEN, BreakerState.CLOSED, 0.0, 0
                            )
                        )
            state = br.state
            open_until = br.open_until if state is BreakerState.OPEN else 0.0

        if report.concurrency is not None:
            self._slots.get(ids["concurrency"], {}).pop(report.holder, None)
        if report.limiter is not None and report.pause is not None:
            args = limiter_args(report.limiter)
            lim = self._limiters.setdefault(ids["limiter"], _Limiter())
            until = now + report.pause
            lim.tat = _stored(max(lim.tat, until + args["tau"]))
            lim.atat = _stored(max(lim.atat, until + args["tau"]))
            lim.paused_until = _stored(max(lim.paused_until, until))
        if report.attempt_key is not None and report.attempt_mark == "released":
            self._attempts.pop(report.attempt_key, None)
        elif report.attempt_key is not None:
            self._attempts[report.attempt_key] = (
                report.attempt_mark,
                _stored(now + report.mark_ttl),
            )
        return RecordAnswer(
            now=now,
            breaker_state=state,
            open_until=open_until,
            transitions=tuple(transitions),
        )

    def breaker(
        self, policy: CircuitBreaker, op: Literal["status", "open", "close", "reset"] = "status"
    ) -> BreakerStatus:
        """Read a breaker, force it open or closed, or reset it."""
        with self._lock:
            now = self._now()
            existed = policy.name in self._breakers
            br = self._breakers.setdefault(policy.name, _Breaker())
            transitions: list[Transition] = []
            self._phase(br, policy, now, transitions)
            new = {
                "open": BreakerState.FORCED_OPEN,
                "close": BreakerState.FORCED_CLOSED,
                "reset": BreakerState.CLOSED,
            }.get(op)
            if new is not None:
                if new is not br.state:
                    transitions.append(Transition(policy.name, br.state, new, 0.0, 0))
                br.state = new
                br.changed_at = _stored(now)
                br.half_open_successes = 0
                br.probes.clear()
                existed = True
                if op == "reset":
                    br.window.clear()
                    br.shed = 0.0
                    br.owed = 0.0
                    br.open_for = _stored(policy.open_for)
                    br.open_until = 0.0
            succ, fail, req, recent, firsts, retries, probe, rejected, at_rate = self._totals(
                br, policy, now, keep=True
            )
            br.probes = {h: t for h, t in br.probes.items() if t > _stored(now)}
            calls = succ + fail
            ratio = sending_ratio(probe, policy.throttle)
            judged = judged_requests(req, at_rate, ratio, policy.throttle)
            shed = shed_share(judged, recent, rejected, ratio, policy.minimum_calls)
            return BreakerStatus(
                name=policy.name,
                state=br.state,
                failure_rate=fail / calls if calls else 0.0,
                calls=calls,
                failures=fail,
                open_until=br.open_until if br.state is BreakerState.OPEN else 0.0,
                open_for=br.open_for if br.open_for is not None else policy.open_for,
                changed_at=br.changed_at,
                probes=len(br.probes),
                shed=shed if br.state is BreakerState.CLOSED else 0.0,
                first_attempts=firsts,
                retries=retries,
                now=now,
                exists=existed or calls > 0,
                transitions=tuple(transitions),
            )

    def limiter(
        self, policy: RateLimit | None, concurrency: ConcurrencyLimit | None, name: str
    ) -> LimiterStatus:
        """Read a rate limiter and the concurrency limit of the same name."""
        with self._lock:
            now = self._now()
            lim = self._limiters.get(name, _Limiter())
            tau = limiter_args(policy)["tau"] if policy is not None else 0.0
            in_use = sum(1 for t in self._slots.get(name, {}).values() if t > _stored(now))
            return LimiterStatus(
                name=name,
                wait=max(lim.tat - tau - now, 0.0),
                paused_until=lim.paused_until if lim.paused_until > now else 0.0,
                in_use=in_use,
                now=now,
                exists=name in self._limiters or in_use > 0,
            )
