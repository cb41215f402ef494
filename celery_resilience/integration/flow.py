"""One attempt, carried out: the gates asked, the body run, the decisions acted on.

The decisions come from :mod:`celery_resilience.core.decide`; this module does what they
say (store calls, signals, log lines, dead letters, the final exception) and is the same
for both drivers: a worker (:mod:`~celery_resilience.integration.worker`) and eager mode
(:mod:`~celery_resilience.integration.eager`). What differs between them is only what a
:class:`~celery_resilience.core.decisions.Wait` becomes (a message re-published through the
broker, or the next turn of a loop) and where the gates live (Redis, or memory).

It is a little over 400 lines because it is one sequence read top to bottom: the gates,
the body, a failure, a refusal, the end; each step's carrying-out beside the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger

from celery_resilience import signals
from celery_resilience.core import decide, decisions
from celery_resilience.core.ahead import may_go_ahead
from celery_resilience.core.classify import Failure, classify
from celery_resilience.core.errors import BreakerOpenError, GaveUp, ResilienceConfigError
from celery_resilience.core.gates import (
    AttemptMark,
    BreakerOutcome,
    GateAnswer,
    GateAsk,
    OutcomeReport,
    RecordAnswer,
    Transition,
    success_deferrable,
)
from celery_resilience.core.keying import KeyFunctionError, shown
from celery_resilience.core.limits import BODY_LEASE
from celery_resilience.core.options import bind_keys
from celery_resilience.integration.budget import Budget, bind_budget
from celery_resilience.integration.letters import dead_letter
from celery_resilience.integration.settings import deadline_header
from celery_resilience.observability import counters
from celery_resilience.observability.breakers import describe_transition
from celery_resilience.observability.logs import format_outcome
from celery_resilience.observability.redaction import redact_exception

if TYPE_CHECKING:
    from celery.app.task import Context

    from celery_resilience.core.ledger import AttemptState
    from celery_resilience.core.limits import CircuitBreaker, RateLimit
    from celery_resilience.core.options import TaskOptions
    from celery_resilience.integration.task import ResilientTask
    from celery_resilience.state.deadletters import DeadLetter

__all__ = ["Done", "Flow", "Gates", "Lease", "holder_of", "redacted"]

logger = get_task_logger("celery_resilience")


class Gates(Protocol):
    """Where an attempt's gates live: the shared store (a worker) or memory (eager)."""

    def now(self) -> float:
        """The store's clock."""
        ...

    def estimated_now(self) -> float:
        """The store's clock as last seen, without a round trip."""
        ...

    def gate(self, ask: GateAsk, *, cached: bool = True) -> GateAnswer:
        """Ask every gate of one attempt."""
        ...

    def wait_in_place(self, seconds: float, limiter: str) -> None:
        """Wait a moment where the attempt is, for a slot of the rate limit ``limiter``
        (a :class:`~decisions.WaitInPlace`)."""
        ...

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report one attempt's outcome."""
        ...

    def go_ahead(
        self, breaker: CircuitBreaker | None, limiter: RateLimit | None, *, cached: bool = True
    ) -> bool:
        """Let the attempt in on a grant ahead held here, with no ask (False: ask)."""
        ...

    def hold_success(self, breaker: CircuitBreaker) -> bool:
        """Hold a plain success to be counted late, with no report (False: report it)."""
        ...

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter."""
        ...


@dataclass(frozen=True, slots=True)
class Lease:
    """The attempt lease that keeps redelivered copies of a running attempt away."""

    key: str
    seconds: float
    mark_ttl: float
    #: Whether a copy that finds its attempt failed and retried publishes the retry again
    #: (False when the lease guards a second publication, whose first copy did).
    republish_lost_retry: bool = True
    #: The process holding the lease, so that its worker can drop it if it dies.
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The attempt ended with the task's result (the body's, or a fallback's)."""

    result: Any
    verdict: str


def _log_transitions(transitions: tuple[Transition, ...]) -> None:
    for tr in transitions:
        logger.warning("breaker %s: %s", shown(repr(tr.name), tr.key), describe_transition(tr))
    signals.send_transitions(transitions)


def holder_of(task_id: str, attempt: int) -> str:
    """The name one attempt holds its grants under (probe, concurrency slot, slot)."""
    return f"{task_id}:{attempt}"


def redacted(exc: BaseException) -> BaseException:
    """``exc`` with secrets taken out of its string arguments (an HTTP error's message holds
    the URL, query string included), before it travels to the result backend and Flower."""
    return redact_exception(exc)


class Flow:
    """The state of one attempt while it is carried out. Built per attempt; never shared."""

    def __init__(
        self,
        *,
        task: ResilientTask,
        request: Context,
        options: TaskOptions,
        gates: Gates,
        state: AttemptState,
        trace_id: str,
        lease: Lease | None,
        span_id: str,
        rng: decisions.Jitter,
        time_limit: float | None,
    ) -> None:
        self.task = task
        self.span_id = span_id
        self.request = request
        self.gates = gates
        self.lease = lease
        self.rng = rng
        self.time_limit = time_limit
        self.attempt = decisions.Attempt(options=options, state=state, trace_id=trace_id)
        self.task_id: str = request.id or "?"
        self.holder = holder_of(self.task_id, state.attempt)
        self.started = time.monotonic()
        #: How the attempt ended, for its span: success, a verdict, deferred, fallback...
        self.verdict = "unknown"

    @property
    def options(self) -> TaskOptions:
        return self.attempt.options

    @property
    def state(self) -> AttemptState:
        return self.attempt.state

    def _log_outcome(
        self,
        level: int,
        outcome: str,
        *,
        failure: Failure | None = None,
        countdown: float | None = None,
        final_state: str | None = None,
    ) -> None:
        """The one line logged per attempt outcome (built only when it will be written)."""
        if not logger.isEnabledFor(level):  # the line costs more than a no-op task body
            return
        line = format_outcome(
            outcome=outcome,
            verdict=failure.verdict.value if failure is not None else None,
            cause=failure.cause if failure is not None else None,
            duration=time.monotonic() - self.started,
            countdown=countdown,
            final_state=final_state,
        )
        logger.log(level, "%s", line)

    def _set_state(self, state: AttemptState) -> None:
        self.attempt = decisions.Attempt(self.options, state, self.attempt.trace_id)

    # -- the flow --------------------------------------------------------------------

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Done | decisions.Wait:
        counters.count("attempts")
        if signals.attempt_started.receivers:  # no payload built for nobody
            signals.attempt_started.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=self.state.attempt,
                trace_id=self.attempt.trace_id,
                span_id=self.span_id,
            )
        self._bind_keys(args, kwargs)
        if self.state.not_before is not None:
            woken = decide.on_wake(self.attempt, self.gates.now())
            if woken is not None:
                return self._carry(woken, answer=None)
            self._set_state(replace(self.state, not_before=None))
        now = self.gates.estimated_now()
        if self._ungated(self.options.limiter):  # nothing to ask: no ask built, no answer
            return self._let_through(now, args, kwargs)
        expired = decide.before_gate(self.attempt, now)
        if expired is not None:
            return self._carry(expired, answer=None)
        if self._goes_ahead():  # on a grant ahead this process holds: no ask, no answer
            return self._let_through(self.gates.estimated_now(), args, kwargs)
        answer, decision = self._gates(may_wait_in_place=True)
        if isinstance(decision, decisions.WaitInPlace):  # a slot a moment away: wait, ask again
            logger.debug("attempt %d: rate-limit slot in %.3f s, waited here",
                         self.state.attempt, decision.seconds)  # fmt: skip
            self._set_state(decision.state)
            self.gates.wait_in_place(decision.seconds, decision.limiter)
            answer, decision = self._gates(may_wait_in_place=False)
        if isinstance(decision, decisions.Run):
            self._set_state(decision.state)
            return self._body(args, kwargs, probe=answer.probe)
        if isinstance(decision, decisions.UseFallback):
            return self._fallback(decision, args, kwargs)
        return self._carry(decision, answer=answer)

    def _let_through(
        self, now: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Done | decisions.Wait:
        """Run the body of an attempt every gate lets through at ``now`` with no answer
        to read (no gates, or a grant ahead), unless its deadline has passed."""
        admitted = decide.ungated(self.attempt, now)
        if isinstance(admitted, decisions.GiveUp):
            self._report("neutral", probe=False, mark="released")  # a grant ahead, if any
            self._give_up(admitted, exc=None)
        self._set_state(admitted.state)
        return self._body(args, kwargs, probe=False)

    def _goes_ahead(self) -> bool:
        """Let the attempt in on a grant ahead, with no ask built, when it is of the kind
        :meth:`_ask` would be given one for and one is held: True once it has the grant
        (used up, its slot waited for, the call counted by adaptive throttling). Call it
        once per attempt."""
        options = self.options
        breaker, limiter = options.breaker, options.limiter
        return may_go_ahead(
            breaker,
            limiter,
            concurrency=options.concurrency,
            attempt_key=self._attempt_key,
            retry=self.state.failures > 0,
            booked=self._booked_slot() is not None,
        ) and self.gates.go_ahead(breaker, limiter, cached=options.on_open == "defer")

    @property
    def _attempt_key(self) -> str | None:
        """The attempt lease's key, if the attempt holds one."""
        return self.lease.key if self.lease else None

    def _booked_slot(self) -> float | None:
        """The rate-limit slot booked for this attempt on its limiter, if any."""
        slot, limiter = self.state.slot, self.options.limiter
        return slot[1] if slot and limiter and slot[0] == limiter.name else None

    def _gates(self, *, may_wait_in_place: bool) -> tuple[GateAnswer, decisions.Decision]:
        """Ask the gates, and what their answer means."""
        answer = self._ask()
        _log_transitions(answer.transitions)
        decision = decide.after_gate(
            self.attempt,
            answer,
            self.rng,
            republish_lost_retry=self.lease.republish_lost_retry if self.lease else True,
            may_wait_in_place=may_wait_in_place,
        )
        return answer, decision

    def _bind_keys(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Bind keyed limits to this call's key; a key function that raises gives the
        attempt up (FAILURE and a dead letter, never a retry: it would raise again)."""
        try:
            options = bind_keys(self.options, args, kwargs)
        except KeyFunctionError as exc:
            reason = "key_function_failed"
            message = f"task {self.task.name}: {exc}"
            self._give_up(
                decisions.GiveUp(reason=reason, message=message, state=self.state), exc=exc.error
            )
        if options is not self.options:
            self.attempt = decisions.Attempt(options, self.state, self.attempt.trace_id)

    def _ask(self) -> GateAnswer:
        options, state = self.options, self.state
        ask = GateAsk(
            holder=self.holder,
            breaker=options.breaker,
            probe_lease=options.breaker.lease_for(self.time_limit) if options.breaker else None,
            throttle_draw=self.rng.uniform(0.0, 1.0) if options.breaker else None,
            retry=state.failures > 0,
            concurrency=options.concurrency,
            concurrency_lease=self._concurrency_lease(),
            limiter=options.limiter,
            booked_slot=self._booked_slot(),
            limiter_max_wait=self.attempt.remaining(self.gates.estimated_now()),
            attempt_key=self._attempt_key,
            attempt_lease=self.lease.seconds if self.lease else 60.0,
            attempt_owner=self.lease.owner if self.lease else None,
        )
        # With on_open other than "defer", a refusal is final: ask the store, not a cache.
        return self.gates.gate(ask, cached=options.on_open == "defer")

    def _ungated(self, limiter: RateLimit | None) -> bool:
        """Whether an ask (``limiter``: the task's) or a report (``limiter``: the task's if
        the report pauses it) has nothing for the gates: no breaker, concurrency limit,
        rate limit or attempt lease."""
        options = self.options
        return (
            options.breaker is None
            and options.concurrency is None
            and limiter is None
            and self.lease is None
        )

    def _concurrency_lease(self) -> float:
        policy = self.options.concurrency
        if policy is not None and policy.lease is not None:
            return policy.lease
        return self.time_limit + 5.0 if self.time_limit is not None else BODY_LEASE

    def _budget(self) -> Budget | None:
        """What the body's HTTP calls may spend of the deadline (None: no deadline)."""
        deadline, started = self.options.deadline, self.state.started
        if deadline is None or started is None:
            return None
        header = deadline_header(self.task.app.conf)  # read only for a task with a deadline
        return Budget(deadline, started, self.gates.estimated_now, header)

    def _report(
        self,
        outcome: BreakerOutcome,
        *,
        probe: bool,
        pause: float | None = None,
        mark: AttemptMark = "done",
    ) -> RecordAnswer | None:
        """Report the outcome to the gates; ``None`` when there is nothing to report to."""
        if self._ungated(self.options.limiter if pause is not None else None):
            return None
        report = OutcomeReport(
            holder=self.holder,
            breaker=self.options.breaker,
            breaker_outcome=outcome,
            probe=probe,
            concurrency=self.options.concurrency,
            limiter=self.options.limiter,
            pause=pause,
            attempt_key=self._attempt_key,
            mark_ttl=self.lease.mark_ttl if self.lease else 600.0,
            attempt_mark=mark,
        )
        answer = self.gates.record(report)
        _log_transitions(answer.transitions)
        return answer

    def _body(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, probe: bool
    ) -> Done | decisions.Wait:
        try:
            with bind_budget(self._budget()):
                result = self.task.run(*args, **kwargs)
        except Retry:
            # The body re-queued the task itself (self.retry): the same attempt comes back.
            self._report("neutral", probe=probe, mark="released")
            raise
        except Reject as exc:
            mark: AttemptMark = "released" if getattr(exc, "requeue", False) else "done"
            self._report("neutral", probe=probe, mark=mark)
            raise
        except Ignore:
            self._report("neutral", probe=probe)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the body is classified
            return self._failed(exc, probe)
        except BaseException:
            # The worker is stopping (or a hard limit): give back what the gates granted.
            self._report("neutral", probe=probe, mark="released")
            raise
        breaker = self.options.breaker
        if not (
            breaker is not None
            and success_deferrable(
                breaker,
                probe=probe,
                concurrency=self.options.concurrency,
                attempt_key=self._attempt_key,
            )
            and self.gates.hold_success(breaker)  # counted late: no report built
        ):
            self._report("success", probe=probe)
        self.verdict = "success"
        counters.count("succeeded")
        if signals.attempt_succeeded.receivers:
            signals.attempt_succeeded.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=self.state.attempt,
                duration=time.monotonic() - self.started,
            )
        self._log_outcome(logging.INFO, "succeeded", final_state="SUCCESS")
        return Done(result, "success")

    def _failed(self, exc: Exception, probe: bool) -> decisions.Wait:
        duration = time.monotonic() - self.started
        options = self.options
        try:
            failure = classify(
                exc,
                retry_on=options.retry_on,
                give_up_on=options.give_up_on,
                classifier=options.classifier,
            )
            plan = decide.plan_failure(
                self.attempt, failure, now=self.gates.estimated_now(), exc=exc
            )
        except Exception as broken:
            # the task's own classifier or backoff failed: give back what the gates granted,
            # and end the task for good, with a dead letter, rather than guess
            self._report("neutral", probe=probe)
            logger.exception("the task's classifier or backoff failed")
            self.verdict = "gave_up"
            self._give_up(decide.broken(self.attempt, broken), exc=exc)
        except BaseException:
            self._report("neutral", probe=probe, mark="released")
            raise
        self.verdict = failure.verdict.value
        record = self._report(plan.breaker_outcome, probe=probe, pause=plan.pause, mark=plan.mark)
        if record is None:
            record = RecordAnswer(now=self.gates.estimated_now())
        counters.count("failed")
        if signals.attempt_failed.receivers:
            signals.attempt_failed.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=self.state.attempt,
                verdict=failure.verdict,
                cause=failure.cause,
                exc=exc,
                duration=duration,
            )
        decision = decide.after_failure(self.attempt, plan, record, self.rng)
        if isinstance(decision, decisions.FailNow):
            self._log_outcome(logging.WARNING, "failed", failure=failure, final_state="FAILURE")
            self._set_state(decision.state)
            self._dead_letter(failure, reason="permanent failure")
            raise redacted(exc)
        if isinstance(decision, decisions.GiveUp):
            self._give_up(decision, exc=exc)
        counters.count("retries")
        if signals.retry_scheduled.receivers:
            signals.retry_scheduled.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=decision.state.failures,
                countdown=decision.countdown,
                verdict=failure.verdict,
                cause=failure.cause,
                reason=decision.line,
            )
        self._log_outcome(logging.WARNING, "failed", failure=failure, countdown=decision.countdown)
        return decision

    # -- a gate said no, or the task ends ----------------------------------------------

    def _carry(self, decision: decisions.Decision, *, answer: GateAnswer | None) -> decisions.Wait:
        """Act on a decision taken before the body ran (it never returns a result)."""
        if isinstance(decision, decisions.Duplicate):
            logger.info(
                "attempt %d was already done (a redelivered message): ignored", self.state.attempt
            )
            raise Ignore()
        if isinstance(decision, decisions.GiveUp):
            if answer is not None and answer.allowed:
                self._report("neutral", probe=answer.probe, mark="released")
            self._give_up(decision, exc=None)
        if isinstance(decision, decisions.Refuse):
            self.verdict = "refused"
            logger.warning(
                "attempt %d: %s; on_open='fail': FAILURE", self.state.attempt, decision.why
            )
            self._set_state(decision.state)
            self._dead_letter(None, reason=f"{decision.why} (on_open='fail')")
            raise BreakerOpenError(decision.message)
        if not isinstance(decision, decisions.Wait):
            raise TypeError(f"unexpected decision before the body: {decision!r}")
        if decision.quiet:
            if decision.retry:
                logger.warning("%s", decision.line)
            else:
                logger.info("%s", decision.line)
            return decision
        self.verdict = "deferred"
        counters.count("deferrals")
        if signals.deferred.receivers:
            signals.deferred.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=decision.state.attempt,
                gate=decision.gate,
                name=decision.name,
                countdown=decision.countdown,
                reason=decision.line,
            )
        logger.info("%s", decision.line)
        return decision

    def _fallback(
        self, decision: decisions.UseFallback, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Done:
        """``on_open`` is a callable: its result is the task's result."""
        on_open = self.options.on_open
        if not callable(on_open):
            raise ResilienceConfigError(
                f"on_open must be 'defer', 'fail' or a callable: {on_open!r}"
            )
        self.verdict = "fallback"
        result = on_open(*args, **kwargs)
        self._log_outcome(
            logging.INFO, f"answered by its fallback ({decision.why})", final_state="SUCCESS"
        )
        return Done(result, "fallback")

    def unpublished(self, wait: decisions.Wait, why: str) -> NoReturn:
        """The broker would not take ``wait``'s message (``why``), however often it was
        offered: the task ends for good (FAILURE, dead letter), and a copy of this message
        that comes back later finds its attempt done."""
        self.verdict = "gave_up"
        if self.lease is not None:
            self._report("neutral", probe=False, mark="done")
        self._give_up(decide.unpublished(self.attempt, wait, why), exc=None)

    def _give_up(self, decision: decisions.GiveUp, *, exc: BaseException | None) -> NoReturn:
        self._set_state(decision.state)
        counters.count("gave_up")
        if signals.gave_up.receivers:
            signals.gave_up.send(
                sender=self.task,
                task_id=self.task_id,
                attempt=decision.state.attempt,
                reason=decision.reason,
                exc=exc,
                history=decision.state.history,
            )
        logger.error("%s", decision.message.splitlines()[0])
        self._dead_letter(decision.failure, reason=decision.reason)
        # Not chained to the last failure: its message (an URL with a key in its query, say)
        # would travel to the result backend and Flower with the traceback. The ledger in
        # the message says what failed; the worker's log line above has the rest.
        raise GaveUp(decision.message) from None

    def _dead_letter(self, failure: Failure | None, *, reason: str) -> None:
        letter = dead_letter(
            task_name=self.task.name,
            request=self.request,
            failure=failure,
            reason=reason,
            trace_id=self.attempt.trace_id,
            state=self.state,
            now=self.gates.estimated_now(),
        )
        self.gates.add_dead_letter(letter)
