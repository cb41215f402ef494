"""The Lua scripts against the in-process store, driven side by side by hypothesis.

Every step runs on the real Redis first; the in-process store then decides on the very
same clock reading (the one the script returned), and both answers must agree. Times are
short (a 0.2 s open period, a 20/s limiter) so that the machine walks through every state.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from celery_resilience.core.gates import (
    BreakerState,
    GateAnswer,
    GateAsk,
    OutcomeReport,
    RecordAnswer,
)
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.state.fallback import FallbackStore
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.memory import MemoryStore
from celery_resilience.state.redis import RedisStore
from tests.helpers.redis_server import RedisServer

BREAKER = CircuitBreaker(
    "model",
    failure_rate=0.5,
    minimum_calls=3,
    window=0.6,
    open_for=0.12,
    open_for_max=0.5,
    half_open_calls=2,
    probe_lease=0.15,
)
LIMITER = RateLimit("model", "20/s", burst=2)
POOL = ConcurrencyLimit("model", 2)
HOLDERS = [f"t{i}" for i in range(5)]
#: Keys of the keyed machine: one more than its max_keys, so one of them overflows.
KEYS = ["a", "b", "c"]


def _by_key(args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    return kwargs["key"]


def _same_time(a: float, b: float) -> bool:
    return abs(a - b) < 1e-5


class StoresAgree(RuleBasedStateMachine):
    """Redis and the in-process store, given the same steps at the same times, agree."""

    client = None  # set by the test
    breaker_policy = BREAKER
    limiter_policy = LIMITER
    pool_policy = POOL

    def _bound(self, policy: Any, key: str) -> Any:
        return policy.bind(key) if policy.key is not None else policy

    @initialize()
    def start(self) -> None:
        self.redis = RedisStore(self.client, KeySpace(f"model-{uuid.uuid4().hex[:12]}"))
        self.clock = 0.0
        self.memory = MemoryStore(now=lambda: self.clock)
        self.probes: dict[str, bool] = {}
        self.slots: dict[str, float] = {}
        self.attempts: dict[str, int] = dict.fromkeys(HOLDERS, 1)

    def _key(self, holder: str) -> str:
        return self.redis.keys.attempt(holder, self.attempts[holder])

    def _check_gate(self, shared: GateAnswer, local: GateAnswer) -> None:
        assert (shared.allowed, shared.denial, shared.breaker_state, shared.probe) == (
            local.allowed,
            local.denial,
            local.breaker_state,
            local.probe,
        )
        assert _same_time(shared.wait, local.wait)
        assert abs(shared.shed - local.shed) < 1e-9
        assert (shared.slot is None) == (local.slot is None)
        if shared.slot is not None and local.slot is not None:
            assert _same_time(shared.slot, local.slot)
        assert [(t.old, t.new) for t in shared.transitions] == [
            (t.old, t.new) for t in local.transitions
        ]

    @rule(
        holder=st.sampled_from(HOLDERS),
        breaker=st.booleans(),
        limiter=st.booleans(),
        pool=st.booleans(),
        lease=st.booleans(),
        use_slot=st.booleans(),
        max_wait=st.sampled_from([None, None, 0.04, 0.3]),
        draw=st.sampled_from([None, 0.0, 0.3, 0.9]),
        key=st.sampled_from(KEYS),
    )
    def gate(
        self,
        key: str,
        holder: str,
        breaker: bool,
        limiter: bool,
        pool: bool,
        lease: bool,
        use_slot: bool,
        max_wait: float | None,
        draw: float | None,
    ) -> None:
        slot = self.slots.get(holder) if limiter and use_slot else None
        ask = GateAsk(
            holder=holder,
            breaker=self._bound(self.breaker_policy, key) if breaker else None,
            concurrency=self._bound(self.pool_policy, key) if pool else None,
            concurrency_lease=0.3,
            concurrency_poll=0.2,
            limiter=self._bound(self.limiter_policy, key) if limiter else None,
            booked_slot=slot,
            limiter_max_wait=max_wait,
            attempt_key=self._key(holder) if lease else None,
            attempt_lease=0.25,
            throttle_draw=draw,
        )
        shared = self.redis.gate(ask)
        self.clock = shared.now
        local = self.memory.gate(ask)
        self._check_gate(shared, local)
        assert shared.overflow == local.overflow
        self.probes[holder] = shared.probe
        if shared.slot is not None:
            self.slots[holder] = shared.slot

    @rule(
        holder=st.sampled_from(HOLDERS),
        outcome=st.sampled_from(["success", "failure", "neutral"]),
        pool=st.booleans(),
        pause=st.sampled_from([None, None, 0.1, 0.3]),
        lease=st.booleans(),
        mark=st.sampled_from(["done", "retried", "released"]),
        key=st.sampled_from(KEYS),
    )
    def record(
        self,
        key: str,
        holder: str,
        outcome: str,
        pool: bool,
        pause: float | None,
        lease: bool,
        mark: str,
    ) -> None:
        report = OutcomeReport(
            holder=holder,
            breaker=self._bound(self.breaker_policy, key),
            breaker_outcome=outcome,  # type: ignore[arg-type]
            probe=self.probes.pop(holder, False),
            concurrency=self._bound(self.pool_policy, key) if pool else None,
            limiter=self._bound(self.limiter_policy, key),
            pause=pause,
            attempt_key=self._key(holder) if lease else None,
            mark_ttl=0.5,
            attempt_mark=mark,  # type: ignore[arg-type]
        )
        shared: RecordAnswer = self.redis.record(report)
        self.clock = shared.now
        local = self.memory.record(report)
        assert shared.breaker_state == local.breaker_state
        assert _same_time(shared.open_until, local.open_until)
        assert [(t.old, t.new, t.key) for t in shared.transitions] == [
            (t.old, t.new, t.key) for t in local.transitions
        ]
        if lease and mark != "released":
            self.attempts[holder] += 1

    @rule(op=st.sampled_from(["status", "status", "open", "close", "reset"]))
    def admin(self, op: str) -> None:
        shared = self.redis.breaker(BREAKER, op)  # type: ignore[arg-type]
        self.clock = shared.now
        local = self.memory.breaker(BREAKER, op)  # type: ignore[arg-type]
        assert (shared.state, shared.calls, shared.failures, shared.probes) == (
            local.state,
            local.calls,
            local.failures,
            local.probes,
        )
        assert abs(shared.shed - local.shed) < 1e-9
        assert _same_time(shared.open_until, local.open_until)

    @rule(seconds=st.sampled_from([0.0, 0.01, 0.03, 0.06, 0.15]))
    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    @invariant()
    def limiter_agrees(self) -> None:
        if not hasattr(self, "redis"):
            return
        shared = self.redis.limiter(LIMITER, POOL, "model")
        self.clock = shared.now
        local = self.memory.limiter(LIMITER, POOL, "model")
        assert _same_time(shared.wait, local.wait)
        assert _same_time(shared.paused_until, local.paused_until)
        assert shared.in_use == local.in_use


def _run_machine(machine_class: type[StoresAgree], redis_server: RedisServer) -> None:
    """Run one of the state machines against its own database of the test's Redis."""
    machine_class.client = redis_server.client(3)
    machine = machine_class.TestCase
    machine.settings = settings(
        max_examples=25,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    try:
        machine().runTest()
    finally:
        machine_class.client.close()


@pytest.mark.integration
def test_redis_scripts_match_the_reference_model(redis_server):
    """Breaker (its confidence rule and adaptive throttling too), limiter, concurrency and
    attempt leases behave alike in Redis and in memory."""
    _run_machine(StoresAgree, redis_server)


class KeyedStoresAgree(StoresAgree):
    """The same, with every limit keyed (three keys, room for two: one overflows) and a
    short idle time, so that keys leave the registry and come back."""

    breaker_policy = replace(BREAKER, key=_by_key, max_keys=2)
    limiter_policy = replace(LIMITER, key=_by_key, max_keys=2)
    pool_policy = replace(POOL, key=_by_key, max_keys=2)


@pytest.mark.integration
def test_keyed_redis_scripts_match_the_reference_model(redis_server, monkeypatch):
    """Keyed breakers and limits (own state, overflow state, idle keys pruned) behave
    alike in Redis and in memory."""
    monkeypatch.setattr("celery_resilience.state.redis.IDLE_TTL", 0.2)
    monkeypatch.setattr("celery_resilience.state.memory.IDLE_TTL", 0.2)
    _run_machine(KeyedStoresAgree, redis_server)


@pytest.mark.integration
def test_a_store_out_of_memory_falls_back_instead_of_failing(tmp_path):
    """Redis answering OOM (or READONLY, LOADING...) is a store that cannot serve: the gate
    falls back to the process's own state rather than failing the task."""
    with RedisServer(
        tmp_path, extra_args=["--maxmemory", "1", "--maxmemory-policy", "noeviction"]
    ) as server:
        client = server.client()
        try:
            store = FallbackStore(RedisStore(client, KeySpace("oom")))
            answer = store.gate(
                GateAsk(
                    holder="t", breaker=BREAKER, limiter=LIMITER, attempt_key="oom:attempt:{t}:-:1"
                )
            )
            assert answer.allowed
            assert answer.fallback
            assert store.degraded
        finally:
            client.close()


def _next_bucket(client: Any, window: float) -> None:
    """Wait (bounded) until the Redis clock is in the next tenth of ``window``."""
    width = window / 10

    def bucket() -> int:
        sec, usec = client.time()
        return int((sec + usec / 1_000_000) // width)

    start, deadline = bucket(), time.monotonic() + 5 * width + 1
    while bucket() == start:
        assert time.monotonic() < deadline, "the Redis clock did not move"
        time.sleep(width / 20)


_RANDOM = ["success", "failure", "failure"]
#: an upstream at capacity: the busier round of a pair gets no more accepted
_AT_CAPACITY = ["success", "failure", "success", "success"], ["success", "failure"] * 3


@pytest.mark.integration
@pytest.mark.parametrize(
    ("window", "rounds", "quiet"),
    [
        (30.0, [_RANDOM] * 6, 0),
        (0.5, [_RANDOM] * 24, 0),
        (0.5, list(_AT_CAPACITY) * 12, 0),
        (0.5, [["success", "failure", "failure", "failure", "failure"], _RANDOM] * 12, 2),
    ],
    ids=["one tenth", "many tenths", "at capacity", "some tenths shed nothing"],
)
def test_redis_sheds_like_the_reference_model(redis_server, window, rounds, quiet):
    """Adaptive throttling: the same calls and outcomes give the same share shed, and the
    same draws the same calls shed, in Redis and in memory; in one tenth of the window,
    and over many (each round of calls, with a short window, in a tenth of its own: the
    probe's odd and even ratios, buckets leaving the horizon and, at capacity, requests
    judged at their recent rate). With ``quiet``, the calls of every round whose number
    is a multiple of it draw nothing (nothing is shed in their tenths), so the probe
    counts tenths that shed, tenths after one that did, and leaves out the others."""
    client = redis_server.client(3)
    redis = RedisStore(client, KeySpace(f"shed-{uuid.uuid4().hex[:12]}"))
    clock = {"now": 0.0}
    memory = MemoryStore(now=lambda: clock["now"])
    # with quiet tenths, a breaker that does not open on these failures keeps shedding
    failure_rate = 0.95 if quiet else 0.5
    breaker = CircuitBreaker("shed", minimum_calls=5, window=window, failure_rate=failure_rate)
    shed = 0
    calls = [(r, outcome) for r, round_ in enumerate(rounds) for outcome in round_]
    try:
        for i, (r, outcome) in enumerate(calls):
            if window < 1 and (i == 0 or calls[i - 1][0] != r):
                _next_bucket(client, window)
            draw = None if quiet and r % quiet == 0 else (i % 10) / 10
            ask = GateAsk(holder=f"t{i}", breaker=breaker, throttle_draw=draw)
            shared = redis.gate(ask)
            clock["now"] = shared.now
            local = memory.gate(ask)
            assert (shared.allowed, shared.denial) == (local.allowed, local.denial)
            assert abs(shared.shed - local.shed) < 1e-9
            if not shared.allowed:
                shed += 1
                continue
            report = OutcomeReport(holder=f"t{i}", breaker=breaker, breaker_outcome=outcome)  # type: ignore[arg-type]
            clock["now"] = redis.record(report).now
            memory.record(report)
        shared_status = redis.breaker(breaker)
        clock["now"] = shared_status.now  # the recent rate depends on the time in the bucket
        local_status = memory.breaker(breaker)
        assert shared_status.state is local_status.state
        assert abs(shared_status.shed - local_status.shed) < 1e-9
        assert shed > 0
        if window > 1:  # all in one tenth: closed, and shedding
            assert shared_status.state is BreakerState.CLOSED
            assert shared_status.shed > 0
    finally:
        client.close()


def test_redis_keeps_a_retry_budget_like_the_reference_model(redis_server):
    """The retry budget: the same first attempts and retries get the same answers, and the
    same counts, in Redis and in memory; a refusal says how many retries it allows."""
    client = redis_server.client(3)
    redis = RedisStore(client, KeySpace(f"budget-{uuid.uuid4().hex[:12]}"))
    clock = {"now": 0.0}
    memory = MemoryStore(now=lambda: clock["now"])
    breaker = CircuitBreaker(
        "budget", minimum_calls=1000, throttle=None, retry_budget=0.2, retry_floor=0.2
    )
    refused = 0
    try:
        for i in range(40):
            ask = GateAsk(holder=f"t{i}", breaker=breaker, retry=i % 3 == 0)
            shared = redis.gate(ask)
            clock["now"] = shared.now
            local = memory.gate(ask)
            assert (shared.allowed, shared.denial) == (local.allowed, local.denial)
            if shared.retries or local.retries:  # the answer carries 14 significant digits
                assert shared.retries == pytest.approx(local.retries)
            refused += not shared.allowed
        shared_status, local_status = redis.breaker(breaker), memory.breaker(breaker)
        assert (shared_status.first_attempts, shared_status.retries) == (
            local_status.first_attempts,
            local_status.retries,
        )
        assert shared_status.first_attempts == 26
        # 14 retries asked; the window allows max(0.2 x 10 s, 0.2 x first attempts so far)
        assert 0 < refused < 14
        assert shared_status.retries == 14 - refused
    finally:
        client.close()
