"""Grants ahead against a real Redis: what ``gate.lua`` hands a busy process, that the
grants keep the rate limit's window bound however late they are used, that nothing
holding a lease, a key or a shedding breaker gets any, and what a process's runtime does
with them (no round trip while it holds some, none kept after a failure, every call
counted by the breaker's throttle).

And with a real worker node: a busy pool process asks the gates for many attempts at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from celery_resilience.core import clock
from celery_resilience.core.ahead import AHEAD_FOR, MOST_AHEAD
from celery_resilience.core.gates import Denial, GateAnswer, GateAsk, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.integration.runtime import Runtime, runtime_for
from celery_resilience.state.deferred import DeferredSuccesses
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore, limiter_args
from example_project.upstream import Upstream
from tests.helpers.celery_apps import make_app, state_app
from tests.helpers.cluster import module_env, note, wait_all, windows
from tests.helpers.monitor import CommandLog, script_sha
from tests.helpers.processes import free_port
from tests.helpers.redis_server import HOST, RedisServer

pytestmark = pytest.mark.integration

FAST = RateLimit("fast", "100000/s", burst=1000)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, upstream_server: Upstream) -> dict[str, str]:
    """The workers' environment with the default duplicate guard (an attempt lease only for
    ``acks_late`` tasks): an attempt that holds a lease is never granted ahead."""
    return module_env(redis_server, upstream_server.url, RESILIENCE_TEST_GUARD="acks_late")


@pytest.fixture
def store(redis_server: RedisServer, unique: str) -> Iterator[RedisStore]:
    client = redis_server.client(3)
    yield RedisStore(client, KeySpace(f"ahead-{unique}"))
    client.close()


@pytest.fixture
def runtime(redis_server: RedisServer, unique: str) -> Iterator[Runtime]:
    app = state_app(redis_server, f"ahead-{unique}")
    rt = runtime_for(app)
    rt.successes = DeferredSuccesses(rt.store.record, every=3600.0)
    yield rt
    rt.client.close()
    app.close()


def _scripts_run(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _hold_grants(runtime: Runtime, ask: GateAsk, count: int) -> None:
    """Make ``runtime`` hold ``count`` grants ahead for ``ask``'s gates, usable now and
    for an hour (as if Redis had answered so): what it holds then does not hang on the
    test's timing."""
    answer = GateAnswer(
        allowed=True, now=1000.0, ahead=(1000.0,) * count, ahead_until=1000.0 + 3600.0
    )
    runtime.ahead.keep(ask, answer, sent_at=clock.monotonic())


def _ask(unique: str, **parts: object) -> GateAsk:
    return GateAsk(holder=f"{unique}:1", **parts)  # type: ignore[arg-type]


def test_a_busy_process_is_given_grants_ahead(store, unique):
    """A closed breaker and a limit with room: the gate grants the attempt and as many
    more as asked, usable within AHEAD_FOR seconds."""
    breaker = CircuitBreaker(f"b-{unique}")
    limiter = RateLimit(f"l-{unique}", "100000/s", burst=100)
    answer = store.gate(_ask(unique, breaker=breaker, limiter=limiter, ahead=10))
    assert answer.allowed
    assert len(answer.ahead) == 10
    assert answer.ahead_until == pytest.approx(answer.now + AHEAD_FOR, abs=1e-5)
    assert all(answer.now <= t < answer.ahead_until for t in answer.ahead)

    alone = store.gate(_ask(unique, breaker=breaker, ahead=MOST_AHEAD))
    assert alone.allowed
    assert len(alone.ahead) == MOST_AHEAD


@pytest.mark.parametrize(
    ("rate", "burst", "most"),
    [("200/s", None, 0), ("1000/s", None, 0), ("1000/s", 10, 9), ("1000/s", 100, 32)],
)
def test_grants_ahead_come_out_of_the_burst(store, unique, rate, burst, most):
    """A limit gives grants ahead out of its burst only (none with a burst of 1), and
    anyone else's next call is still granted at the limit's rate: one interval later."""
    limiter = RateLimit(f"l-{unique}", rate, burst=burst)
    answer = store.gate(_ask(unique, limiter=limiter, ahead=MOST_AHEAD))
    assert answer.allowed
    assert len(answer.ahead) == most
    other = store.gate(GateAsk(holder=f"{unique}:2", limiter=limiter))
    if most < (burst or 1) - 1:
        assert other.allowed
    else:
        assert not other.allowed
        assert other.wait <= limiter.interval + 1e-6


@pytest.mark.parametrize("use", ["at once", "at the last moment"])
@pytest.mark.parametrize(("rate", "burst"), [("500/s", 5), ("2000/s", 20), ("1000/s", 300)])
def test_grants_ahead_keep_the_limits_window_bound(store, unique, rate, burst, use):
    """Two processes race on one limit for 0.5 s, one taking grants ahead at every ask and
    using each at once or at the last moment it may: no window holds more calls than the
    limit allows any window (rate x length + burst, with the limiter's documented slack)."""
    limiter = RateLimit(f"l-{unique}", rate, burst=burst)
    used: list[float] = []
    given = 0
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        busy = store.gate(GateAsk(holder=f"{unique}:a", limiter=limiter, ahead=MOST_AHEAD))
        if busy.allowed:
            used.append(busy.now)
            late = busy.ahead_until - 1e-6
            used.extend(busy.ahead if use == "at once" else [late] * len(busy.ahead))
            given += len(busy.ahead)
        other = store.gate(GateAsk(holder=f"{unique}:b", limiter=limiter))
        if other.allowed:
            used.append(other.now)
    assert given > 0
    _assert_window_bound(used, limiter)


def test_grants_ahead_used_at_their_last_moment_leave_no_burst_behind(store, unique):
    """A process takes grants ahead once and uses them all at the last moment; once they
    are void, another drains the limit as fast as it can: the void grants count as calls
    made then, so the two together stay within the limit's burst."""
    limiter = RateLimit(f"l-{unique}", "1000/s", burst=10)
    busy = store.gate(GateAsk(holder=f"{unique}:a", limiter=limiter, ahead=MOST_AHEAD))
    assert len(busy.ahead) == 9
    used = [busy.now] + [busy.ahead_until - 1e-6] * len(busy.ahead)
    time.sleep(busy.ahead_until - busy.now + 0.001)  # the grants are void: time must pass
    for _ in range(30):
        other = store.gate(GateAsk(holder=f"{unique}:b", limiter=limiter))
        if other.allowed:
            used.append(other.now)
    _assert_window_bound(used, limiter)


def _assert_window_bound(used: list[float], limiter: RateLimit) -> None:
    """No window holds more of ``used`` than the limit allows one of its length."""
    args = limiter_args(limiter)
    for length in (limiter.interval, 10 * limiter.interval, AHEAD_FOR, 2 * AHEAD_FOR, 0.4):
        most = math.floor((length + args["tau"] + args["slack"]) / args["T"]) + 1
        worst = windows(used, length - 1e-6)
        assert worst <= most, (length, worst, most)


def test_nothing_with_a_lease_a_key_or_a_slow_limit_gets_grants_ahead(store, unique):
    breaker = CircuitBreaker(f"b-{unique}")
    slow = RateLimit(f"slow-{unique}", "99/s", burst=50)
    assert not store.gate(_ask(unique, limiter=slow, ahead=8)).ahead
    no_burst = RateLimit(f"nb-{unique}", "1000/s")
    assert not store.gate(_ask(unique, limiter=no_burst, ahead=8)).ahead
    slots = ConcurrencyLimit(f"c-{unique}", 5)
    assert store.gate(_ask(unique, breaker=breaker, concurrency=slots, ahead=8)).allowed
    assert not store.gate(_ask(unique, breaker=breaker, concurrency=slots, ahead=8)).ahead
    leased = _ask(unique, breaker=breaker, attempt_key=f"ahead-{unique}:attempt:1", ahead=8)
    assert not store.gate(leased).ahead
    keyed = CircuitBreaker(f"k-{unique}", key=lambda a, k: "x").bind("acme")
    answer = store.gate(_ask(unique, breaker=keyed, ahead=8))
    assert answer.allowed
    assert not answer.ahead


def test_a_limit_booked_ahead_by_others_gives_none(store, unique):
    limiter = RateLimit(f"l-{unique}", "200/s")
    assert store.gate(GateAsk(holder=f"{unique}:1", limiter=limiter)).allowed
    booked = store.gate(GateAsk(holder=f"{unique}:2", limiter=limiter))
    assert not booked.allowed
    assert booked.slot is not None
    time.sleep(max(booked.slot - booked.now, 0.0) + 0.001)  # the slot is due: granted
    answer = store.gate(
        GateAsk(holder=f"{unique}:2", limiter=limiter, booked_slot=booked.slot, ahead=8)
    )
    assert answer.allowed
    assert not answer.ahead


def test_a_breaker_that_sheds_or_probes_gives_none(store, unique):
    """Adaptive throttling at work (calls sent far beyond those accepted), or a half-open
    breaker: every call is asked for."""
    shedding = CircuitBreaker(f"shed-{unique}")
    store.record(OutcomeReport(holder="-", breaker=shedding, carried_successes=3, carried_sent=40))
    assert store.breaker(shedding).shed > 0
    answer = store.gate(_ask(unique, breaker=shedding, throttle_draw=0.999, ahead=8))
    assert answer.allowed
    assert not answer.ahead

    probing = CircuitBreaker(f"probe-{unique}", minimum_calls=2, open_for=0.05)
    for _ in range(2):
        store.record(OutcomeReport(holder="-", breaker=probing, breaker_outcome="failure"))
    time.sleep(0.06)
    probe = store.gate(_ask(unique, breaker=probing, ahead=8))
    assert probe.allowed
    assert probe.probe
    assert not probe.ahead


def test_a_runtime_holding_grants_asks_redis_again_only_when_they_run_out(runtime, unique):
    breaker = CircuitBreaker(f"b-{unique}")
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, limiter=FAST, throttle_draw=0.5)
    assert runtime.gate(ask).allowed  # the scripts loaded, the demand counted
    before = _scripts_run(runtime.client)
    for _ in range(200):
        assert runtime.gate(ask).allowed
    calls = _scripts_run(runtime.client) - before
    assert calls <= 200 / 5


def test_an_attempt_goes_ahead_on_a_held_grant_with_no_ask_and_no_round_trip(runtime, unique):
    """What a pool process does for most gated attempts: no ask is built, no Redis call
    is made while it holds grants; once they run out it says so without counting the
    attempt, which its ask then counts once."""
    breaker = CircuitBreaker(f"b-{unique}")
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, limiter=FAST)
    for _ in range(3):
        assert not runtime.go_ahead(breaker, FAST)  # nothing held yet
    assert runtime.ahead.wanted(ask) == 0  # and no attempt counted (3 would ask for 2)
    for _ in range(10):
        assert runtime.gate(ask).allowed
    before = _scripts_run(runtime.client)
    gone_ahead = 0
    while runtime.go_ahead(breaker, FAST):
        gone_ahead += 1
        assert gone_ahead <= MOST_AHEAD
    assert gone_ahead >= 1
    assert _scripts_run(runtime.client) == before
    wanted = runtime.ahead.wanted(ask)
    assert not runtime.go_ahead(breaker, FAST)
    assert runtime.ahead.wanted(ask) == wanted  # a refusal counts nothing
    assert runtime.gate(ask).allowed
    assert _scripts_run(runtime.client) == before + 1


def test_nothing_goes_ahead_behind_a_breaker_this_process_saw_open(runtime, unique):
    """A breaker whose OPEN verdict this process holds (within its second) lets nothing
    in on a grant ahead it still holds, with ``on_open="defer"`` (``cached``): the
    attempt asks, and is told OPEN from memory, as it would be without grants ahead.
    With another ``on_open`` a refusal is final and the cache is not read: the grant
    is used, as ``gate(ask, cached=False)`` would use it."""
    breaker = CircuitBreaker(f"b-{unique}", minimum_calls=2)
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, limiter=FAST)
    for _ in range(4):  # another process's failures: no grant this one holds is voided
        runtime.store.record(
            OutcomeReport(holder=f"{unique}:2", breaker=breaker, breaker_outcome="failure")
        )
    seen = runtime.gate(GateAsk(holder=f"{unique}:3", breaker=breaker))
    assert seen.denial is Denial.BREAKER_OPEN
    _hold_grants(runtime, ask, 2)
    before = _scripts_run(runtime.client)
    assert not runtime.go_ahead(breaker, FAST)
    assert runtime.gate(ask).denial is Denial.BREAKER_OPEN
    assert _scripts_run(runtime.client) == before
    assert runtime.go_ahead(breaker, FAST, cached=False)  # the grant was held all along


def test_a_runtime_on_a_store_that_is_down_lets_nothing_go_ahead_and_holds_no_success(unique):
    """While the store is down, the gates answer from the per-process fallback and a
    success is reported to it at once: nothing goes ahead on a grant the process still
    holds, nothing is held."""
    app = make_app(f"ahead-down-{unique}", broker="memory://", backend=None, queue=unique,
                   set_as_current=False)  # fmt: skip
    app.conf.resilience_backend_url = f"redis://{HOST}:{free_port()}/0"
    rt = Runtime(app)
    breaker = CircuitBreaker(f"b-{unique}")
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, limiter=FAST)
    assert rt.gate(ask).fallback
    assert rt.store.degraded
    _hold_grants(rt, ask, 2)
    assert not rt.go_ahead(breaker, FAST)
    assert not rt.hold_success(breaker)
    assert rt.successes.held == 0
    assert rt.ahead.use(breaker.name, FAST.name) is not None  # the grants were held
    rt.client.close()
    app.close()


def test_grants_ahead_set_to_zero_asks_redis_for_every_attempt(redis_server, unique):
    app = state_app(redis_server, f"ahead-off-{unique}")
    app.conf.resilience_grants_ahead = 0
    rt = runtime_for(app)
    ask = GateAsk(holder=f"{unique}:1", breaker=CircuitBreaker(f"b-{unique}"), limiter=FAST)
    assert rt.gate(ask).allowed
    before = _scripts_run(rt.client)
    for _ in range(50):
        assert rt.gate(ask).allowed
    assert _scripts_run(rt.client) - before == 50
    rt.client.close()
    app.close()


def test_a_failure_voids_the_grants_the_process_holds(runtime, unique):
    breaker = CircuitBreaker(f"b-{unique}")
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, limiter=FAST)
    for _ in range(10):
        runtime.gate(ask)
    before = _scripts_run(runtime.client)
    assert runtime.gate(ask).allowed
    assert _scripts_run(runtime.client) == before  # handed out from what it holds

    runtime.record(OutcomeReport(holder=f"{unique}:1", breaker=breaker, breaker_outcome="failure"))
    before = _scripts_run(runtime.client)
    assert runtime.gate(ask).allowed
    assert _scripts_run(runtime.client) == before + 1  # asked Redis again


def test_every_call_sent_on_a_grant_ahead_is_counted_by_the_throttle(runtime, unique):
    """The gate counts the calls it grants; the process counts those it hands out itself
    and reports them with its held successes: the window counts every call once."""
    breaker = CircuitBreaker(f"b-{unique}")
    ask = GateAsk(holder=f"{unique}:1", breaker=breaker, throttle_draw=0.5)
    for _ in range(150):
        assert runtime.gate(ask).allowed
    runtime.successes.flush()
    window = runtime.shared.keys.breaker(breaker.name)[1]
    counted = runtime.client.hgetall(window)
    sent = sum(int(v) for k, v in counted.items() if k.decode().endswith(":q"))
    assert sent == 150


def test_a_busy_pool_process_asks_the_gates_for_many_attempts_at_once(
    worker, client, redis_server, request
):
    """400 quick tasks behind a breaker and a limit far above their rate, on one node of 2
    prefork processes: each busy process is handed grants ahead, so the gate script runs for
    far fewer attempts than one each (it ran once per attempt before), and every task
    succeeds once."""
    with CommandLog(HOST, redis_server.port) as log:
        results = [client.send_task("res.busy", args=[i]) for i in range(400)]
        states = wait_all(results, timeout=90, what="400 quick gated tasks")
        gates = [
            c
            for c in log.commands(db=2, containing="limiter:{busy}")
            if c.sha == script_sha("gate")
        ]

    assert states == ["SUCCESS"] * 400
    assert [r.result for r in results] == list(range(400))
    note(request, gate_calls_per_task=round(len(gates) / 400, 3))
    assert len(gates) < 400 / 2
