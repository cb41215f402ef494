"""An attempt looks for a grant ahead before it builds an ask: it must look exactly when
the ask it would build is of the kind given grants ahead, and a plain success must be
held exactly when its report would be."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context

from celery_resilience import GaveUp, resilient_task
from celery_resilience.core.ahead import may_ask_ahead
from celery_resilience.core.gates import GateAnswer, GateAsk, OutcomeReport, RecordAnswer
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.integration.flow import Flow, Lease

LIMIT = RateLimit("api", "1000/s", burst=100)


def _tenant(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return "tenant-1"


class Recorder:
    """Gates that let everything through and keep what the attempt asked and reported."""

    def __init__(self, *, ahead_wait: float = 0.0) -> None:
        self.clock = 1000.0
        #: how long going ahead waits for the grant's slot (moves the clock on)
        self.ahead_wait = ahead_wait
        self.asks: list[GateAsk] = []
        self.reports: list[OutcomeReport] = []
        self.ahead: list[tuple[Any, Any, bool]] = []
        self.held: list[CircuitBreaker] = []
        self.letters: list[object] = []

    def now(self) -> float:
        return self.clock

    def estimated_now(self) -> float:
        return self.clock

    def gate(self, ask: GateAsk, *, cached: bool = True) -> GateAnswer:
        self.asks.append(ask)
        return GateAnswer(allowed=True, now=self.clock)

    def wait_in_place(self, seconds: float, limiter: str) -> None:
        raise AssertionError("nothing here waits")

    def record(self, report: OutcomeReport) -> RecordAnswer:
        self.reports.append(report)
        return RecordAnswer(now=self.clock)

    def add_dead_letter(self, letter: object) -> None:
        self.letters.append(letter)

    def go_ahead(self, breaker: Any, limiter: Any, *, cached: bool = True) -> bool:
        self.ahead.append((breaker, limiter, cached))
        self.clock += self.ahead_wait
        return True

    def hold_success(self, breaker: CircuitBreaker) -> bool:
        self.held.append(breaker)
        return True


@pytest.fixture(scope="module")
def task() -> Iterator[Any]:
    app = Celery("flow-ahead", broker="memory://", set_as_current=False)

    @resilient_task(app=app, name="flow.ahead.noop")
    def noop() -> str:
        return "done"

    yield noop
    app.close()


BREAKERS = (
    None,
    CircuitBreaker("b"),
    CircuitBreaker("b", key=_tenant).bind("tenant-1"),
    CircuitBreaker("b", retry_budget=0.2),
)
LIMITERS = (None, LIMIT, replace(LIMIT, key=_tenant).bind("tenant-1"))
CONCURRENCIES = (None, ConcurrencyLimit("c", 2))
SLOTS = (None, ("api", 1000.5), ("other", 1000.5))
LEASES = (None, Lease(key="lease:t1:1", seconds=60.0, mark_ttl=600.0))
ON_OPENS = ("defer", "fail")


def _flow(task: Any, gates: Recorder, options: Any, state: AttemptState, lease: Any) -> Flow:
    return Flow(
        task=task,
        request=Context(id="t1"),
        options=options,
        gates=gates,
        state=state,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        lease=lease,
        span_id="b7ad6b7169203331",
        rng=random.Random(7),
        time_limit=None,
    )


def test_an_attempt_looks_ahead_exactly_when_its_ask_may_be_granted_ahead(task):
    """Every combination of gates, retry, booked slot, lease and on_open."""
    for breaker, limiter, concurrency, failures, slot, lease, on_open in itertools.product(
        BREAKERS, LIMITERS, CONCURRENCIES, (0, 1), SLOTS, LEASES, ON_OPENS
    ):
        options = replace(
            task.resilience_options(),
            breaker=breaker,
            limiter=limiter,
            concurrency=concurrency,
            on_open=on_open,
        )
        state = AttemptState(failures=failures, started=999.0, slot=slot)
        gates = Recorder()
        flow = _flow(task, gates, options, state, lease)
        flow._ask()
        (ask,) = gates.asks
        case = (breaker, limiter, concurrency, failures, slot, lease, on_open)
        assert flow._goes_ahead() == may_ask_ahead(ask), case
        expected = [(breaker, limiter, on_open == "defer")] if may_ask_ahead(ask) else []
        assert gates.ahead == expected, case


def test_a_success_is_held_exactly_when_its_report_may_wait(task):
    """Every combination of breaker, concurrency limit, probe and lease."""
    for breaker, concurrency, probe, lease in itertools.product(
        BREAKERS, CONCURRENCIES, (False, True), LEASES
    ):
        _check_success(task, breaker, concurrency, probe=probe, lease=lease)


def _check_success(task: Any, breaker: Any, concurrency: Any, *, probe: bool, lease: Any) -> None:
    options = replace(task.resilience_options(), breaker=breaker, concurrency=concurrency)
    gates = Recorder()
    flow = _flow(task, gates, options, AttemptState(started=999.0), lease)
    done = flow._body((), {}, probe=probe)
    assert done.result == "done"
    would_wait = OutcomeReport(
        holder=flow.holder,
        breaker=breaker,
        breaker_outcome="success",
        probe=probe,
        concurrency=concurrency,
        attempt_key=lease.key if lease else None,
    ).deferrable
    gated = breaker is not None or concurrency is not None or lease is not None
    assert gates.held == ([breaker] if would_wait else [])
    reported = ["success"] if gated and not would_wait else []
    assert [r.breaker_outcome for r in gates.reports] == reported


def test_an_attempt_past_its_deadline_gives_back_the_grant_it_went_ahead_on(task):
    """Its deadline passed while it waited for the grant's slot: as after a granted ask,
    the grant is reported back (neutral, released) and the task gives up, with its dead
    letter."""
    breaker = CircuitBreaker("b")
    options = replace(task.resilience_options(), breaker=breaker, deadline=10.0)
    gates = Recorder(ahead_wait=0.5)
    flow = _flow(task, gates, options, AttemptState(started=990.2), None)
    with pytest.raises(GaveUp, match="deadline"):
        flow.run((), {})
    assert gates.ahead == [(breaker, None, True)]
    assert gates.asks == []
    assert [(r.breaker_outcome, r.attempt_mark) for r in gates.reports] == [("neutral", "released")]
    assert len(gates.letters) == 1
