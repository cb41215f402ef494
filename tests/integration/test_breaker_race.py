"""OS processes racing on one half-open breaker through the real Redis scripts.

Every process has its own Redis client and asks :meth:`RedisStore.gate` as fast as a
busy cluster would. What they were answered carries the Redis server's time, so the
checks below replay the race on the one clock that decided it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_resilience.core.gates import BreakerState
from celery_resilience.core.limits import CircuitBreaker
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from tests.helpers import racers
from tests.helpers.breakers import half_open
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration

RACERS = 6
RACE_SECONDS = 3.0
#: Decisions closer than this to a lease's expiry are not judged (times are kept to 1 µs).
EDGE = 1e-5
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStore]:
    """A store under a key prefix of this test's own."""
    client = redis_server.client(3)
    yield RedisStore(client, KeySpace(f"race-{uuid.uuid4().hex[:10]}"))
    client.close()


def _live(grants: list[dict[str, Any]], lease: float, at: float) -> int:
    """How many granted probes hold their slot at Redis time ``at``: from the grant until
    released or until the lease expires, whichever comes first."""
    live = 0
    for grant in grants:
        end = grant["at"] + lease
        if grant["released"] is not None:
            end = min(end, grant["released"])
        live += grant["at"] <= at < end
    return live


def _near_an_edge(grants: list[dict[str, Any]], lease: float, at: float) -> bool:
    return any(abs(at - (g["at"] + lease)) < EDGE for g in grants)


def test_racing_processes_never_hold_more_probes_than_allowed(redis_server, store, tmp_path):
    """6 processes ask for probes of a half-open breaker (2 probes, 0.4 s leases) for 3 s,
    holding, releasing, releasing late or abandoning them: at every grant at most 2 probes
    are live, and every refusal came while both slots were held (no slot is ever lost)."""
    kwargs = {
        "name": "race",
        "minimum_calls": 1,
        "open_for": 0.2,
        "half_open_calls": 2,
        "probe_lease": 0.4,
    }
    policy = CircuitBreaker(**kwargs)
    half_open(store, policy)
    barrier = SPAWN.Barrier(RACERS)
    processes = [
        SPAWN.Process(
            target=racers.race_probes,
            args=(
                redis_server.url(3), store.keys.prefix, kwargs, i, barrier, RACE_SECONDS,
                str(tmp_path),
            ),
            name=f"racer{i}",
        )
        for i in range(RACERS)
    ]  # fmt: skip
    racers.run_all(processes, timeout=60)

    events = racers.read_events(tmp_path)
    grants = [e for e in events if e["probe"]]
    refusals = [e for e in events if not e["probe"]]
    assert {e["denial"] for e in refusals} == {"breaker_half_open"}
    assert len(grants) >= 10, "too few probes granted for the race to mean anything"
    assert any(g["released"] is None for g in grants), "no probe was abandoned"
    for grant in grants:
        assert _live(grants, policy.lease, grant["at"]) <= policy.half_open_calls, grant
    for refusal in refusals:
        if not _near_an_edge(grants, policy.lease, refusal["at"]):
            assert _live(grants, policy.lease, refusal["at"]) == policy.half_open_calls, refusal
    assert store.breaker(policy).state is BreakerState.HALF_OPEN


def test_a_killed_probe_holder_frees_its_slot_when_the_lease_expires(redis_server, store, tmp_path):
    """A process holding the only probe is SIGKILLed; 4 processes then ask every few ms.
    Until the probe's lease expires each is refused (told to wait until then); right after
    it expires, one of them is granted the probe."""
    kwargs = {"name": "victim", "minimum_calls": 1, "open_for": 0.2, "probe_lease": 2.0}
    policy = CircuitBreaker(**kwargs)
    half_open(store, policy)
    victim_out, pollers_out = tmp_path / "victim", tmp_path / "pollers"
    victim_out.mkdir()
    pollers_out.mkdir()
    barrier = SPAWN.Barrier(5)
    pollers = [
        SPAWN.Process(
            target=racers.race_probes,
            args=(
                redis_server.url(3), store.keys.prefix, kwargs, i, barrier, 3.0,
                str(pollers_out), True,
            ),
            name=f"poller{i}",
        )
        for i in range(4)
    ]  # fmt: skip
    victim = SPAWN.Process(
        target=racers.hold_probe,
        args=(redis_server.url(3), store.keys.prefix, kwargs, str(victim_out)),
        name="victim",
    )
    for poller in pollers:
        poller.start()
    victim.start()
    try:
        (held,) = wait_until(
            lambda: racers.read_events(victim_out), timeout=30, what="the victim to take the probe"
        )
        assert held["probe"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        barrier.wait(timeout=60)
        for poller in pollers:
            poller.join(30)
            assert poller.exitcode == 0
    finally:
        racers.kill_all([victim, *pollers])

    expiry = held["at"] + policy.lease
    events = sorted(racers.read_events(pollers_out), key=lambda e: e["at"])
    before = [e for e in events if e["at"] < expiry - EDGE]
    granted = [e for e in events if e["probe"]]
    assert before, "no poller asked while the dead probe's lease was live"
    for refusal in before:
        assert not refusal["probe"]
        assert refusal["denial"] == "breaker_half_open"
        assert refusal["wait"] == pytest.approx(expiry - refusal["at"], abs=EDGE)
    assert granted, "no poller was granted the probe after the lease expired"
    assert expiry <= granted[0]["at"] < expiry + 0.5
