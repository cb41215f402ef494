"""The eager driver (``task_always_eager``): every attempt in the caller's call.

It runs the same attempt flow as a worker
(:func:`~celery_resilience.integration.attempt.run_traced`: the same gates,
classification, decisions, signals, dead letters and final exceptions), with two
differences that eager mode imposes:

* the gates live in this process's memory, one store per app, and no Redis is needed;
* a wait is not waited: the driver moves the app's eager clock on by the countdown and
  runs the next attempt at once, logging the wait it skipped. Deadlines, open breakers
  and rate-limit slots are all judged on that clock, so a task that would give up on a
  worker after waiting gives up here too.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from celery import Celery

from celery_resilience import signals
from celery_resilience.core import clock
from celery_resilience.core.errors import GaveUp
from celery_resilience.core.ledger import gave_up_message
from celery_resilience.integration.attempt import run_traced
from celery_resilience.integration.flow import Done
from celery_resilience.integration.message import incoming_state, incoming_trace
from celery_resilience.state.memory import MemoryStore

if TYPE_CHECKING:
    from celery.app.task import Context

    from celery_resilience.core.gates import GateAnswer, GateAsk, OutcomeReport, RecordAnswer
    from celery_resilience.integration.task import ResilientTask
    from celery_resilience.state.deadletters import DeadLetter

__all__ = ["EAGER_ATTEMPT_LIMIT", "EagerGates", "eager_gates", "run_eager"]

logger = logging.getLogger("celery_resilience.integration.eager")

#: Eager mode has no countdowns: an unbounded task is still stopped after this many turns
#: (attempts and deferrals).
EAGER_ATTEMPT_LIMIT = 100
_DEAD_LETTERS = 1_000


class EagerGates:
    """The gates of one app in eager mode: an in-memory store on a clock that skips waits."""

    def __init__(self) -> None:
        self._skipped = 0.0
        self._lock = threading.Lock()
        self.store = MemoryStore(now=self.now)
        #: Dead letters of this app's eager tasks, newest last.
        self.dead_letters: deque[DeadLetter] = deque(maxlen=_DEAD_LETTERS)

    def now(self) -> float:
        """The local clock, moved on by every wait skipped so far."""
        return clock.now() + self._skipped

    def estimated_now(self) -> float:
        """The same clock (there is no store to ask)."""
        return self.now()

    def skip(self, seconds: float) -> None:
        """Move the clock on by a wait that eager mode does not wait."""
        with self._lock:
            self._skipped += max(seconds, 0.0)

    def gate(self, ask: GateAsk, *, cached: bool = True) -> GateAnswer:
        """Ask the in-memory gates."""
        return self.store.gate(ask)

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report to the in-memory gates."""
        return self.store.record(report)

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep the dead letter in memory."""
        self.dead_letters.append(letter)


_gates: weakref.WeakKeyDictionary[Celery, EagerGates] = weakref.WeakKeyDictionary()
_gates_lock = threading.Lock()


def eager_gates(app: Celery) -> EagerGates:
    """The eager gates of ``app`` in this process (gone with the app)."""
    with _gates_lock:
        found = _gates.get(app)
        if found is None:
            found = _gates[app] = EagerGates()
        return found


def run_eager(
    task: ResilientTask, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``task`` eagerly: every attempt now, in this call, a wait skipped on the clock."""
    headers = dict(request.headers or {})
    state = incoming_state(headers)
    trace = incoming_trace(headers)
    gates = eager_gates(task.app)
    options = task.resilience_options(overrides=False)
    for _ in range(EAGER_ATTEMPT_LIMIT):
        outcome = run_traced(
            task,
            request,
            args,
            kwargs,
            options=options,
            gates=gates,
            state=state,
            trace=trace,
            lease=None,
            time_limit=None,
        )
        if isinstance(outcome, Done):
            return outcome.result
        logger.info("eager mode skips the wait of %.2f s (%s)", outcome.countdown, outcome.line)
        gates.skip(outcome.countdown)
        state = outcome.state
    reason = f"eager mode stops after {EAGER_ATTEMPT_LIMIT} attempts and deferrals"
    signals.gave_up.send(
        sender=task,
        task_id=request.id,
        attempt=state.attempt,
        reason=reason,
        exc=None,
        history=state.history,
    )
    raise GaveUp(gave_up_message(reason=reason, state=state, trace_id=trace.trace_id)) from None
