"""Bodies of the OS processes that race on one breaker or one limiter through RedisStore.

Tests start them with ``multiprocessing`` (spawn): each makes its own Redis client, waits
on a barrier with the others, then asks :meth:`RedisStore.gate` in a loop bounded in time
and in count, and writes what it was answered (Redis server times) to ``<out>/<index>.json``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import redis

from celery_resilience.core.gates import GateAsk, OutcomeReport
from celery_resilience.core.limits import CircuitBreaker, RateLimit
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore

#: No racer asks more often than this, whatever the clock says.
MAX_ASKS = 20_000


def run_all(processes: list[Any], timeout: float) -> None:
    """Start the processes and join each (bounded); a straggler is killed, and a process
    that did not end well raises AssertionError."""
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout)
            assert process.exitcode == 0, f"{process.name} ended with {process.exitcode}"
    finally:
        kill_all(processes)


def kill_all(processes: list[Any]) -> None:
    """SIGKILL (by PID) and reap those of the processes still alive."""
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(5)


def read_events(out: Path) -> list[dict[str, Any]]:
    """The events every racer wrote to ``out``."""
    return [e for f in sorted(out.glob("*.json")) for e in json.loads(f.read_text())]


def _store(url: str, prefix: str) -> RedisStore:
    return RedisStore(redis.Redis.from_url(url, socket_timeout=10), KeySpace(prefix))


def _write(out: str, index: int, events: list[dict[str, Any]]) -> None:
    Path(out, f"{index}.json").write_text(json.dumps(events))


def race_probes(
    url: str,
    prefix: str,
    breaker: dict[str, Any],
    index: int,
    barrier: Any,
    seconds: float,
    out: str,
    keep: bool = False,
) -> None:
    """Ask for half-open probes every few milliseconds for ``seconds``.

    A granted probe is held for a random time below 1.5 leases; then it is released (a
    neutral outcome, which leaves the breaker half-open), released too late, or abandoned,
    as a dead worker would. With ``keep``, the process stops at its first probe and keeps
    it.
    """
    rng = random.Random(index)
    store = _store(url, prefix)
    policy = CircuitBreaker(**breaker)
    events: list[dict[str, Any]] = []
    barrier.wait(timeout=60)
    end = time.monotonic() + seconds
    for n in range(MAX_ASKS):
        if time.monotonic() >= end:
            break
        holder = f"p{index}-{n}"
        answer = store.gate(GateAsk(holder=holder, breaker=policy))
        event: dict[str, Any] = {
            "holder": holder,
            "at": answer.now,
            "probe": answer.probe,
            "denial": answer.denial.value if answer.denial else None,
            "wait": answer.wait,
            "released": None,
        }
        events.append(event)
        if not answer.probe:
            time.sleep(rng.uniform(0.0, 0.01))
            continue
        if keep:
            break
        hold = rng.uniform(0.0, 1.5 * policy.lease)
        time.sleep(hold)
        if hold < policy.lease or rng.random() < 0.5:
            report = OutcomeReport(
                holder=holder, breaker=policy, breaker_outcome="neutral", probe=True
            )
            event["released"] = store.record(report).now
    _write(out, index, events)


def hold_probe(url: str, prefix: str, breaker: dict[str, Any], out: str) -> None:
    """Take a probe, write when it was granted, then hold it until killed (60 s at most)."""
    store = _store(url, prefix)
    answer = store.gate(GateAsk(holder="victim", breaker=CircuitBreaker(**breaker)))
    _write(out, 0, [{"at": answer.now, "probe": answer.probe}])
    time.sleep(60)


def take_slots(
    url: str,
    prefix: str,
    limiter: dict[str, Any],
    index: int,
    barrier: Any,
    seconds: float,
    out: str,
) -> None:
    """Take from one rate limiter for ``seconds``, as woken tasks do: told "wait w, slot
    s", sleep w, then present s. Once the time is up, a booked slot is still presented
    (so that every slot the limiter booked is accounted for), but nothing new is asked."""
    store = _store(url, prefix)
    policy = RateLimit(**limiter)
    events: list[dict[str, Any]] = []
    barrier.wait(timeout=60)
    end = time.monotonic() + seconds
    booked: float | None = None
    for n in range(MAX_ASKS):
        if booked is None and time.monotonic() >= end:
            break
        answer = store.gate(GateAsk(holder=f"t{index}-{n}", limiter=policy, booked_slot=booked))
        events.append(
            {"at": answer.now, "ok": answer.allowed, "slot": answer.slot, "presented": booked}
        )
        if answer.allowed:
            booked = None
        else:
            booked = answer.slot
            time.sleep(answer.wait)
    _write(out, index, events)
