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
from celery_resilience.core.decisions import Wait
from celery_resilience.core.errors import GaveUp
from celery_resilience.core.ledger import gave_up_message
from celery_resilience.integration.attempt import run_traced
from celery_resilience.integration.flow import Done
from celery_resilience.integration.message import incoming_state, incoming_trace
from celery_resilience.observability import counters
from celery_resilience.state.memory import MemoryStore

if TYPE_CHECKING:
    from celery.app.task import Context

    from celery_resilience.core.gates import GateAnswer, GateAsk, OutcomeReport, RecordAnswer
    from celery_resilience.core.limits import CircuitBreaker, RateLimit
    from celery_resilience.integration.task import ResilientTask
    from celery_resilience.state.deadletters import DeadLetter

__all__ = [
    "EAGER_ATTEMPT_LIMIT",
    "EagerGates",
    "EagerTurns",
    "eager_gates",
    "run_eager",
    "set_eager_gates",
]

logger = logging.getLogger("celery_resilience.integration.eager")

#: Eager mode has no countdowns: an unbounded task is still stopped after this many turns
#: (attempts and deferrals).
EAGER_ATTEMPT_LIMIT = 100
_DEAD_LETTERS = 1_000


class EagerGates:
    """The gates of one app in eager mode: an in-memory store on a clock that skips waits.

    With ``frozen_at``, the clock stands still at that time, moved on only by the waits
    skipped (tests); otherwise it is the local clock plus those waits.
    """

    def __init__(self, *, frozen_at: float | None = None) -> None:
        self._frozen_at = frozen_at
        self._skipped = 0.0
        self._lock = threading.Lock()
        self.store = MemoryStore(now=self.now)
        #: Dead letters of this app's eager tasks, newest last.
        self.dead_letters: deque[DeadLetter] = deque(maxlen=_DEAD_LETTERS)

    def now(self) -> float:
        """The local clock, moved on by every wait skipped so far."""
        base = clock.now() if self._frozen_at is None else self._frozen_at
        return base + self._skipped

    @property
    def skipped(self) -> float:
        """The seconds skipped so far."""
        return self._skipped

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

    def wait_in_place(self, seconds: float, limiter: str) -> None:
        """A moment's wait is skipped on the clock like any other."""
        self.skip(seconds)

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report to the in-memory gates."""
        return self.store.record(report)

    def go_ahead(
        self, breaker: CircuitBreaker | None, limiter: RateLimit | None, *, cached: bool = True
    ) -> bool:
        """Eager mode holds no grants ahead: every attempt asks."""
        return False

    def hold_success(self, breaker: CircuitBreaker) -> bool:
        """Eager mode counts every success at once."""
        return False

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


def set_eager_gates(app: Celery, gates: EagerGates | None) -> EagerGates | None:
    """Give ``app`` these eager gates (None: fresh ones on next use); returns the old ones."""
    with _gates_lock:
        old = _gates.pop(app, None)
        if gates is not None:
            _gates[app] = gates
        return old


class EagerTurns:
    """The turns of one eager task (attempts and deferrals), run one at a time.

    :meth:`turn` runs one attempt at the gates' clock as it stands; moving the clock on by
    a returned wait is the caller's.
    """

    def __init__(
        self,
        task: ResilientTask,
        request: Context,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        headers = dict(request.headers or {})
        self.task = task
        self.request = request
        self.args = args
        self.kwargs = kwargs
        self.state = incoming_state(headers)
        self.trace = incoming_trace(headers)
        self.gates = eager_gates(task.app)
        self.options = task.resilience_options(overrides=False)

    def turn(self) -> Done | Wait:
        """Run one attempt: its result, or the wait before the next (final failures raise)."""
        outcome = run_traced(
            self.task,
            self.request,
            self.args,
            self.kwargs,
            options=self.options,
            gates=self.gates,
            state=self.state,
            trace=self.trace,
            lease=None,
            time_limit=None,
        )
        if isinstance(outcome, Wait):
            self.state = outcome.state
        return outcome

    def exhausted(self) -> GaveUp:
        """Too many turns: send ``gave_up``; the :class:`GaveUp` to raise (from None)."""
        reason = f"eager mode stops after {EAGER_ATTEMPT_LIMIT} attempts and deferrals"
        counters.count("gave_up")
        if signals.gave_up.receivers:
            signals.gave_up.send(
                sender=self.task,
                task_id=self.request.id,
                attempt=self.state.attempt,
                reason=reason,
                exc=None,
                history=self.state.history,
            )
        message = gave_up_message(reason=reason, state=self.state, trace_id=self.trace.trace_id)
        return GaveUp(message)


def run_eager(
    task: ResilientTask, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``task`` eagerly: every attempt now, in this call, a wait skipped on the clock."""
    turns = EagerTurns(task, request, args, kwargs)
    for _ in range(EAGER_ATTEMPT_LIMIT):
        outcome = turns.turn()
        if isinstance(outcome, Done):
            return outcome.result
        logger.info("eager mode skips the wait of %.2f s (%s)", outcome.countdown, outcome.line)
        turns.gates.skip(outcome.countdown)
    raise turns.exhausted() from None
