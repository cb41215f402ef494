"""One attempt of a resilient task on a worker: gates, body, outcome, next step.

The flow (DESIGN.md, "Behaviour, per attempt"):

1. trace context from the message (or a fresh one), a new span, logging bound;
2. a wait split below the broker's visibility timeout not yet over → wait again;
3. the gates, in one round trip: attempt lease, breaker, concurrency, rate limit;
4. the deadline;
5. a gate that says "not now" → deferred (re-queued; no retry is spent);
6. the body; its outcome recorded in one round trip;
7. a failure classified: permanent → FAILURE now; transient or rate-limited → retried
   after a countdown, unless retries or deadline are spent → FAILURE (gave up).

Re-queueing goes through ``Task.retry`` with the task's own counters in a message header;
nothing of one attempt is kept on the (shared) task object.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger

from celery_resilience import signals
from celery_resilience.core.backoff import retry_countdown
from celery_resilience.core.classify import Failure, Verdict, classify
from celery_resilience.core.errors import (
    BreakerOpenError,
    Deferred,
    GaveUp,
    ResilienceConfigError,
    RetryScheduled,
)
from celery_resilience.core.ledger import (
    HEADER,
    AttemptState,
    deferral_line,
    gave_up_message,
    retry_line,
)
from celery_resilience.core.options import TaskOptions
from celery_resilience.integration.runtime import Runtime, runtime_for
from celery_resilience.observability.logs import format_outcome, redact
from celery_resilience.observability.otel import attempt_span
from celery_resilience.observability.redaction import redact_exception
from celery_resilience.observability.tracing import (
    AttemptInfo,
    TraceContext,
    bind_attempt,
    current_attempt,
    hold_attempt,
    new_trace,
    parse_traceparent,
    release_attempt,
    safe_token,
)
from celery_resilience.state.base import (
    AttemptMark,
    BreakerState,
    Denial,
    GateAnswer,
    GateAsk,
    OutcomeReport,
    RecordAnswer,
    Transition,
)
from celery_resilience.state.deadletters import DeadLetter, capped_repr

if TYPE_CHECKING:
    from celery.app.task import Context

    from celery_resilience.integration.task import ResilientTask

__all__ = ["TRACE_HEADER", "release_held", "run_eager", "run_in_worker", "trace_for_publish"]

logger = get_task_logger("celery_resilience")
_internal = logging.getLogger("celery_resilience.integration.attempt")

#: The message header carrying the W3C trace context.
TRACE_HEADER = "traceparent"
#: A random token given to each publication of a task (its redelivered copies keep it, a
#: new publication under the same task ID gets another): it keys the attempt leases.
NONCE_HEADER = "resilience_nonce"
_NONCE_RE = re.compile(r"^[0-9a-f]{8,32}$")
#: A task woken this early (seconds) before its time is let through rather than re-queued.
_EARLY = 0.05
#: Countdown of a retry published again by a redelivered copy of its failed attempt.
_REPUBLISH = 0.5
#: Eager mode has no countdowns: an unbounded task is still stopped after this many tries.
EAGER_ATTEMPT_LIMIT = 100
_noted: set[str] = set()


def _note_once(key: str, message: str, *args: object) -> None:
    if key not in _noted:
        _noted.add(key)
        _internal.warning(message, *args)


def _incoming_trace(headers: dict[str, Any]) -> TraceContext:
    raw = headers.get(TRACE_HEADER)
    parsed = parse_traceparent(raw)
    if parsed is not None:
        return parsed
    if raw is not None:
        _note_once(
            "traceparent",
            "celery-resilience: a malformed %s header was replaced by a fresh trace "
            "(noted once per process)",
            TRACE_HEADER,
        )
    return trace_for_publish()


def new_nonce() -> str:
    """A fresh publication token."""
    return secrets.token_hex(8)


def _nonce(request: Context) -> str:
    """The publication token of this message ("-" when its publisher set none)."""
    value = (request.headers or {}).get(NONCE_HEADER)
    return value if isinstance(value, str) and _NONCE_RE.match(value) else "-"


def trace_for_publish() -> TraceContext:
    """The trace a task published now continues: the current attempt's, OTel's, or new."""
    attempt = current_attempt()
    if attempt is not None:
        return attempt.trace_context().child()
    from celery_resilience.observability.otel import otel_parent  # noqa: PLC0415 - optional dependency

    parent = otel_parent()
    return parent.child() if parent is not None else new_trace()


def _incoming_state(headers: dict[str, Any]) -> AttemptState:
    raw = headers.get(HEADER)
    state = AttemptState.from_header(raw)
    if state is not None:
        return state
    if raw is not None:
        _note_once(
            "state",
            "celery-resilience: a malformed %s header was ignored; the task starts its "
            "count afresh (noted once per process)",
            HEADER,
        )
    return AttemptState()


_BREAKER_OUTCOME = {
    Verdict.TRANSIENT: "failure",
    Verdict.RATE_LIMITED: "neutral",
    Verdict.PERMANENT: "success",
}


class _Attempt:
    """The state of one attempt on a worker. Built per attempt; never shared."""

    def __init__(
        self,
        *,
        task: ResilientTask,
        request: Context,
        opts: TaskOptions,
        rt: Runtime,
        state: AttemptState,
        trace: TraceContext,
        info: AttemptInfo,
    ) -> None:
        self.task = task
        self.request = request
        self.opts = opts
        self.rt = rt
        self.state = state
        self.trace = trace
        self.info = info
        self.task_id: str = request.id or "?"
        self.holder = f"{self.task_id}:{state.attempt}"
        #: How the attempt ended, for its span: success, a verdict, deferred, fallback...
        self.verdict = "unknown"
        self.attempt_key = (
            rt.settings.keys.attempt(self.task_id, state.attempt, _nonce(request))
            if self._needs_lease()
            else None
        )
        self.started = time.monotonic()

    # -- signals and logs ----------------------------------------------------------------

    def _transitions(self, transitions: tuple[Transition, ...]) -> None:
        for tr in transitions:
            logger.warning(
                "breaker %r: %s -> %s (failure rate %.2f over %d calls)",
                tr.name,
                tr.old.value,
                tr.new.value,
                tr.failure_rate,
                tr.calls,
            )
        signals.send_transitions(transitions)

    # -- the flow ------------------------------------------------------------------------

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.args, self.kwargs = args, kwargs
        signals.attempt_started.send(
            sender=self.task,
            task_id=self.task_id,
            attempt=self.state.attempt,
            trace_id=self.trace.trace_id,
            span_id=self.info.span_id,
        )
        if self.state.not_before is not None:
            now = self.rt.now()
            if now < self.state.not_before - _EARLY:
                self._defer(
                    wait=self.state.not_before - now,
                    gate="schedule",
                    name=None,
                    why="waiting out a long countdown in legs below the broker's "
                    "visibility timeout",
                    now=now,
                )
            self.state = replace(self.state, not_before=None)

        slot = self.state.slot
        limiter = self.opts.limiter
        ask = GateAsk(
            holder=self.holder,
            breaker=self.opts.breaker,
            concurrency=self.opts.concurrency,
            concurrency_lease=self._concurrency_lease(),
            limiter=limiter,
            booked_slot=slot[1] if slot and limiter and slot[0] == limiter.name else None,
            limiter_max_wait=self._remaining(self.rt.estimated_now()),
            attempt_key=self.attempt_key,
            attempt_lease=self._attempt_lease(),
        )
        # With on_open other than "defer", a refusal is final: ask Redis, not the cache.
        answer = self.rt.gate(ask, cached=self.opts.on_open == "defer")
        self._transitions(answer.transitions)
        if answer.denial in (Denial.DONE, Denial.RETRIED, Denial.RUNNING):
            return self._duplicate(answer)  # a copy of an attempt seen before: no verdict
        started = self.state.started if self.state.started is not None else answer.now
        self.state = replace(self.state, started=started, slot=None)

        if self._deadline_passed(answer.now):
            if answer.allowed:
                self._report("neutral", probe=answer.probe, pause=None, mark="released")
            self._give_up(f"deadline of {self.opts.deadline:g} s passed", exc=None, failure=None)
        if not answer.allowed:
            return self._denied(answer)

        try:
            result = self.task.run(*args, **kwargs)
        except Retry:
            # The body re-queued the task itself (self.retry): the same attempt comes back.
            self._report("neutral", probe=answer.probe, pause=None, mark="released")
            raise
        except Reject as exc:
            mark: AttemptMark = "released" if getattr(exc, "requeue", False) else "done"
            self._report("neutral", probe=answer.probe, pause=None, mark=mark)
            raise
        except Ignore:
            self._report("neutral", probe=answer.probe, pause=None)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the body is classified
            self._failed(exc, answer)
        except BaseException:
            # The worker is stopping (or a hard limit): give back what the gates granted.
            self._report("neutral", probe=answer.probe, pause=None, mark="released")
            raise
        self._report("success", probe=answer.probe, pause=None)
        self.verdict = "success"
        duration = time.monotonic() - self.started
        signals.attempt_succeeded.send(
            sender=self.task, task_id=self.task_id, attempt=self.state.attempt, duration=duration
        )
        if logger.isEnabledFor(logging.INFO):  # the line costs more than a no-op task body
            logger.info(
                "%s",
                format_outcome(
                    outcome="succeeded",
                    verdict=None,
                    cause=None,
                    duration=duration,
                    countdown=None,
                    final_state="SUCCESS",
                ),
            )
        return result

    def _concurrency_lease(self) -> float:
        policy = self.opts.concurrency
        if policy is not None and policy.lease is not None:
            return policy.lease
        limit = self._time_limit()
        return limit + 5.0 if limit is not None else 60.0

    def _needs_lease(self) -> bool:
        """Whether this attempt holds a lease against copies of its message: for acks_late
        tasks (a lost worker leaves its message to be delivered again), or for every task
        when ``resilience_duplicate_guard`` is "always"."""
        return self.rt.settings.duplicate_guard == "always" or bool(self.task.acks_late)

    def _attempt_lease(self) -> float:
        """How long a running attempt keeps copies of itself away: the task's time limit,
        else ``resilience_attempt_lease``, and never less than the Redis broker's visibility
        timeout (no copy can be redelivered sooner)."""
        limit = self._time_limit()
        lease = limit + 5.0 if limit is not None else self.rt.settings.attempt_lease
        visibility = self.rt.settings.visibility_timeout
        return lease if visibility is None else max(lease, visibility)

    def _time_limit(self) -> float | None:
        hard, soft = self.request.timelimit or (None, None)
        hard = hard or self.task.time_limit
        soft = soft or self.task.soft_time_limit
        limits = [float(x) for x in (hard, soft) if x]
        return max(limits) if limits else None

    def _deadline_passed(self, now: float) -> bool:
        deadline = self.opts.deadline
        started = self.state.started
        return deadline is not None and started is not None and now - started >= deadline

    def _remaining(self, now: float) -> float | None:
        if self.opts.deadline is None or self.state.started is None:
            return None
        return self.opts.deadline - (now - self.state.started)

    def _report(
        self, outcome: str, *, probe: bool, pause: float | None, mark: AttemptMark = "done"
    ) -> Any:
        report = OutcomeReport(
            holder=self.holder,
            breaker=self.opts.breaker,
            breaker_outcome=outcome,  # type: ignore[arg-type]
            probe=probe,
            concurrency=self.opts.concurrency,
            limiter=self.opts.limiter,
            pause=pause,
            attempt_key=self.attempt_key,
            mark_ttl=self._mark_ttl(),
            attempt_mark=mark,
        )
        answer = self.rt.record(report)
        self._transitions(answer.transitions)
        return answer

    def _mark_ttl(self) -> float:
        """How long a finished attempt is remembered: as long as a copy may still come
        (the Redis broker's visibility timeout, plus a margin; 10 minutes otherwise)."""
        visibility = self.rt.settings.visibility_timeout
        return visibility + 60.0 if visibility is not None else 600.0

    # -- a gate said no ------------------------------------------------------------------

    def _duplicate(self, answer: GateAnswer) -> Any:
        """A redelivered copy of an attempt seen before. It decides nothing about the task:
        done → ignored; running elsewhere → back later; failed while its retry was being
        published → publish that retry again (a copy of the retry is kept out by its own
        lease)."""
        attempt = self.state.attempt
        if answer.denial is Denial.DONE:
            logger.info("attempt %d was already done (a redelivered message): ignored", attempt)
            raise Ignore()
        if answer.denial is Denial.RUNNING:
            line = deferral_line(
                why=f"attempt {attempt} is running elsewhere (a redelivered message)",
                attempt=attempt,
                max_retries=self.opts.max_retries,
                countdown=answer.wait + 0.5,
                trace_id=self.trace.trace_id,
            )
            logger.info("%s", line)
            self._reschedule(answer.wait + 0.5, Deferred(line), answer.now)
        spent = self.state.failures + 1
        line = retry_line(
            verdict="transient",
            cause="its worker stopped while publishing the retry",
            attempt=attempt,
            max_retries=self.opts.max_retries,
            countdown=_REPUBLISH,
            trace_id=self.trace.trace_id,
        )
        logger.warning("%s", line)
        self.state = replace(self.state, failures=spent).with_entry(
            f"#{attempt} failed; its retry was published again after its worker stopped"
        )
        self._reschedule(_REPUBLISH, RetryScheduled(line), answer.now)

    def _denied(self, answer: GateAnswer) -> Any:
        """Defer the task (the default), or apply the breaker's ``on_open`` policy."""
        denial = answer.denial
        breaker = self.opts.breaker
        on_open = self.opts.on_open
        if (
            breaker is not None
            and on_open != "defer"
            and denial in (Denial.BREAKER_OPEN, Denial.BREAKER_HALF_OPEN)
        ):
            return self._breaker_refused(breaker.name, answer)
        wait = answer.wait
        # Jitter spreads the woken tasks, but must not push one past its deadline when the
        # gate itself would let it through in time.
        remaining = self._remaining(answer.now)
        room = max(remaining - wait - 0.5, 0.0) if remaining is not None else float("inf")
        limiter, pool = self.opts.limiter, self.opts.concurrency
        name: str | None = None
        if denial is Denial.BREAKER_OPEN and breaker is not None:
            gate, name = "breaker", breaker.name
            if answer.breaker_state is BreakerState.FORCED_OPEN:
                why = f"breaker {_quote(name)} forced open"
            else:
                why = f"breaker {_quote(name)} open, half-open in {wait:.1f} s"
            wait += min(random.uniform(0.0, breaker.open_for), room)  # noqa: S311 - jitter
        elif denial is Denial.BREAKER_HALF_OPEN and breaker is not None:
            gate, name = "breaker", breaker.name
            why = f"breaker {_quote(name)} half-open, probe in flight"
            wait += min(random.uniform(0.0, 0.5 * breaker.lease), room)  # noqa: S311 - jitter
        elif denial is Denial.RATE_LIMITED and limiter is not None:
            gate, name = "rate_limit", limiter.name
            why = f"rate limit {_quote(name)} ({limiter.rate}) full, slot in {wait:.2f} s"
            if answer.slot is not None:
                self.state = replace(self.state, slot=(limiter.name, answer.slot))
        elif denial is Denial.CONCURRENCY_FULL and pool is not None:
            gate, name = "concurrency", pool.name
            why = f"concurrency {_quote(name)} full ({pool.limit} in flight)"
            # a queue of waiters polls less often the longer it waits (1x, 2x, 4x)
            backlog = 2 ** min(self.state.deferrals, 2)
            wait = wait * backlog * random.uniform(1.0, 1.5)  # noqa: S311 - jitter
        else:
            gate = "backend"
            why = "state store unreachable and resilience_fallback is 'defer'"
            wait *= random.uniform(1.0, 1.5)  # noqa: S311 - jitter
        return self._defer(wait=wait, gate=gate, name=name, why=why, now=answer.now)

    def _breaker_refused(self, name: str, answer: GateAnswer) -> Any:
        """``on_open="fail"``: fail now; a callable: its result is the task's result."""
        state = (
            "forced open"
            if answer.breaker_state is BreakerState.FORCED_OPEN
            else (
                "half-open, probe in flight"
                if answer.denial is Denial.BREAKER_HALF_OPEN
                else f"open, half-open in {answer.wait:.1f} s"
            )
        )
        why = f"breaker {_quote(name)} {state}"
        on_open = self.opts.on_open
        self.verdict = "refused" if on_open == "fail" else "fallback"
        if on_open == "fail":
            logger.warning("attempt %d: %s; on_open='fail': FAILURE", self.state.attempt, why)
            self.state = self.state.with_entry(f"#{self.state.attempt} refused: {why}")
            self._dead_letter(None, reason=f"{why} (on_open='fail')")
            raise BreakerOpenError(f"{why}; on_open='fail'; trace {self.trace.trace_id}")
        if not callable(on_open):
            raise ResilienceConfigError(
                f"on_open must be 'defer', 'fail' or a callable: {on_open!r}"
            )
        result = on_open(*self.args, **self.kwargs)
        logger.info(
            "%s",
            format_outcome(
                outcome=f"answered by its fallback ({why})",
                verdict=None,
                cause=None,
                duration=time.monotonic() - self.started,
                countdown=None,
                final_state="SUCCESS",
            ),
        )
        return result

    def _defer(self, *, wait: float, gate: str, name: str | None, why: str, now: float) -> NoReturn:
        remaining = self._remaining(now)
        if remaining is not None and wait >= remaining:
            self._give_up(
                f"deadline of {self.opts.deadline:g} s would pass while deferred ({why})",
                exc=None,
                failure=None,
            )
        wait = max(wait, 0.01)
        self.verdict = "deferred"
        self.state = replace(self.state, deferrals=self.state.deferrals + 1)
        line = deferral_line(
            why=why,
            attempt=self.state.attempt,
            max_retries=self.opts.max_retries,
            countdown=wait,
            trace_id=self.trace.trace_id,
        )
        signals.deferred.send(
            sender=self.task,
            task_id=self.task_id,
            attempt=self.state.attempt,
            gate=gate,
            name=name,
            countdown=wait,
            reason=line,
        )
        logger.info("%s", line)
        self._reschedule(wait, Deferred(line), now)

    # -- the body failed -----------------------------------------------------------------

    def _failed(self, exc: Exception, answer: GateAnswer) -> NoReturn:
        duration = time.monotonic() - self.started
        try:
            failure = classify(
                exc,
                retry_on=self.opts.retry_on,
                give_up_on=self.opts.give_up_on,
                classifier=self.opts.classifier,
            )
        except BaseException:
            # the task's own classifier failed: give back what the gates granted
            self._report("neutral", probe=answer.probe, pause=None, mark="released")
            raise
        self.verdict = failure.verdict.value
        pause = (
            failure.retry_after
            if failure.verdict is Verdict.RATE_LIMITED and failure.retry_after
            else None
        )
        # Decide first, so that the attempt is marked for what follows: "retried" lets a
        # redelivered copy publish the retry again if this worker dies before it does.
        spent = self.state.failures + 1
        give_up: str | None = None
        countdown = None
        if failure.verdict is not Verdict.PERMANENT:
            if self.opts.max_retries is not None and spent > self.opts.max_retries:
                give_up = f"retries exhausted (max_retries={self.opts.max_retries})"
            else:
                countdown = retry_countdown(
                    self.opts.backoff,
                    spent,
                    retry_after=failure.retry_after,
                    remaining=self._remaining(self.rt.estimated_now()),
                    exc=exc,
                ).seconds
                if countdown is None:
                    give_up = (
                        f"deadline of {self.opts.deadline:g} s leaves no room for another attempt"
                    )
        record = self._report(
            _BREAKER_OUTCOME[failure.verdict],
            probe=answer.probe,
            pause=pause,
            mark="retried" if countdown is not None else "done",
        )
        signals.attempt_failed.send(
            sender=self.task,
            task_id=self.task_id,
            attempt=self.state.attempt,
            verdict=failure.verdict,
            cause=failure.cause,
            exc=exc,
            duration=duration,
        )
        if failure.verdict is Verdict.PERMANENT:
            logger.warning(
                "%s",
                format_outcome(
                    outcome="failed",
                    verdict=failure.verdict.value,
                    cause=failure.cause,
                    duration=duration,
                    countdown=None,
                    final_state="FAILURE",
                ),
            )
            entry = f"#{self.state.attempt} permanent: {failure.cause}"
            self.state = self.state.with_entry(entry)
            self._dead_letter(failure, reason="permanent failure")
            raise redacted(exc)
        if give_up is not None or countdown is None:
            self._give_up(give_up or "no retry possible", exc=exc, failure=failure)
        seconds = self._not_before_half_open(countdown, record)
        line = retry_line(
            verdict=failure.verdict.value,
            cause=failure.cause,
            attempt=self.state.attempt,
            max_retries=self.opts.max_retries,
            countdown=seconds,
            trace_id=self.trace.trace_id,
        )
        self.state = replace(self.state, failures=spent).with_entry(
            f"#{spent} {failure.verdict.value}: {failure.cause}"
        )
        signals.retry_scheduled.send(
            sender=self.task,
            task_id=self.task_id,
            attempt=spent,
            countdown=seconds,
            verdict=failure.verdict,
            cause=failure.cause,
            reason=line,
        )
        logger.warning(
            "%s",
            format_outcome(
                outcome="failed",
                verdict=failure.verdict.value,
                cause=failure.cause,
                duration=duration,
                countdown=seconds,
                final_state=None,
            ),
        )
        self._reschedule(seconds, RetryScheduled(line), record.now)

    def _not_before_half_open(self, seconds: float, record: RecordAnswer) -> float:
        """A retry due while the breaker (opened by this very failure, or before) is still
        open would only be deferred on waking: schedule it for the half-open time instead,
        spread like a deferral, when the deadline allows."""
        breaker = self.opts.breaker
        if breaker is None or record.breaker_state is not BreakerState.OPEN:
            return seconds
        floor = record.open_until - record.now + random.uniform(0.0, breaker.open_for)  # noqa: S311
        remaining = self._remaining(record.now)
        if seconds >= floor or (remaining is not None and floor >= remaining):
            return seconds
        return floor

    def _give_up(
        self, reason: str, *, exc: BaseException | None, failure: Failure | None
    ) -> NoReturn:
        if failure is not None:
            self.state = self.state.with_entry(
                f"#{self.state.attempt} {failure.verdict.value}: {failure.cause}"
            )
        message = gave_up_message(reason=reason, state=self.state, trace_id=self.trace.trace_id)
        signals.gave_up.send(
            sender=self.task,
            task_id=self.task_id,
            attempt=self.state.attempt,
            reason=reason,
            exc=exc,
            history=self.state.history,
        )
        logger.error("%s", message.splitlines()[0])
        self._dead_letter(failure, reason=reason)
        # Not chained to the last failure: its message (an URL with a key in its query, say)
        # would travel to the result backend and Flower with the traceback. The ledger in
        # the message says what failed; the worker's log line above has the rest.
        raise GaveUp(message) from None

    def _dead_letter(self, failure: Failure | None, *, reason: str) -> None:
        request = self.request
        delivery = request.delivery_info or {}
        letter = DeadLetter(
            task_name=self.task.name,
            task_id=safe_token(request.id),
            args=redact(capped_repr(request.args)),
            kwargs=redact(capped_repr(request.kwargs)),
            args_json=_json_or_none(request.args),
            kwargs_json=_json_or_none(request.kwargs),
            verdict=failure.verdict.value if failure is not None else "deadline",
            cause=failure.cause if failure is not None else reason,
            reason=reason,
            trace_id=self.trace.trace_id,
            attempts=self.state.attempt,
            history=self.state.history,
            worker=safe_token(request.hostname or "?"),
            queue=delivery.get("routing_key"),
            failed_at=self.rt.estimated_now(),
            first_attempt_at=self.state.started,
        )
        self.rt.add_dead_letter(letter)

    # -- re-queue ------------------------------------------------------------------------

    def _reschedule(self, countdown: float, reason: Exception, now: float) -> NoReturn:
        cap = self.rt.settings.countdown_cap
        leg = countdown
        state = self.state
        if cap is not None and countdown > cap:
            leg = cap
            state = replace(state, not_before=now + countdown)
        # Task.retry replaces the custom headers: start from this message's own, minus
        # RabbitMQ's x-death bookkeeping (as Celery's own retry does).
        headers = dict(self.request.as_execution_options().get("headers") or {})
        headers[HEADER] = state.to_header()
        headers[TRACE_HEADER] = TraceContext(
            self.trace.trace_id, self.info.span_id, self.trace.sampled
        ).traceparent()
        # Celery publishes request.retries + 1 and compares it with the task's class-level
        # max_retries: make it count failures only (deferrals spend no retry), and never
        # past that class-level bound, which a named policy may exceed.
        ceiling = self.task.max_retries
        counted = state.failures if ceiling is None else min(state.failures, ceiling)
        self.request.retries = counted - 1
        try:
            raise self.task.retry(exc=reason, countdown=leg, headers=headers)
        except Reject as exc:
            # The next attempt could not be published (the broker is away): put this
            # message back rather than drop it; its copy knows what to do (see _duplicate).
            raise Reject(getattr(exc, "reason", exc), requeue=True) from None


def redacted(exc: BaseException) -> BaseException:
    """``exc`` with secrets taken out of its string arguments (an HTTP error's message holds
    the URL, query string included), before it travels to the result backend and Flower."""
    return redact_exception(exc)


def _quote(name: str) -> str:
    return repr(safe_token(name))


def _json_or_none(value: object) -> str | None:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return None
    return text if len(text) <= 65_536 else None


def _bind(
    task: ResilientTask, request: Context, state: AttemptState, trace: TraceContext, span_id: str
) -> AttemptInfo:
    return AttemptInfo(
        trace_id=trace.trace_id,
        span_id=span_id,
        task_id=safe_token(request.id),
        task_name=safe_token(task.name),
        attempt=state.attempt,
    )


def run_in_worker(
    task: ResilientTask, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run one attempt of ``task`` on a worker (the request is already pushed)."""
    headers = dict(request.headers or {})
    state = _incoming_state(headers)
    trace = _incoming_trace(headers)
    rt = runtime_for(task.app)
    opts = task.resilience_options()
    with attempt_span(
        task.name, trace, {"celery.task_id": safe_token(request.id), "attempt": state.attempt}
    ) as span:
        info = _bind(task, request, state, trace, span.span_id)
        attempt = _Attempt(
            task=task, request=request, opts=opts, rt=rt, state=state, trace=trace, info=info
        )
        try:
            with bind_attempt(info):
                result = attempt.run(args, kwargs)
        except Retry as exc:
            span.set("countdown", float(exc.when) if isinstance(exc.when, (int, float)) else 0.0)
            raise
        finally:
            span.set("verdict", attempt.verdict)
            _hold(info)
        return result


_held = threading.local()


def _hold(info: AttemptInfo) -> None:
    """Keep the attempt bound for Celery's own lines about it, until ``task_postrun``."""
    release_held()
    _held.token = hold_attempt(info)


def release_held() -> None:
    """Unbind what :func:`_hold` kept (Celery's ``task_postrun``)."""
    token = getattr(_held, "token", None)
    if token is not None:
        _held.token = None
        release_attempt(token)


def run_eager(
    task: ResilientTask, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``task`` eagerly: retries at once, in this call, without gates or countdowns."""
    headers = dict(request.headers or {})
    state = _incoming_state(headers)
    trace = _incoming_trace(headers)
    opts = task.resilience_options(overrides=False)
    limit = opts.max_retries if opts.max_retries is not None else EAGER_ATTEMPT_LIMIT - 1
    while True:
        with attempt_span(task.name, trace, {"attempt": state.attempt}) as span:
            info = _bind(task, request, state, trace, span.span_id)
            with bind_attempt(info):
                signals.attempt_started.send(
                    sender=task,
                    task_id=request.id,
                    attempt=state.attempt,
                    trace_id=trace.trace_id,
                    span_id=info.span_id,
                )
                started = time.monotonic()
                try:
                    result = task.run(*args, **kwargs)
                except (Ignore, Reject):
                    raise
                except Exception as exc:  # a Retry from the body too: run again, now
                    failure = classify(
                        exc,
                        retry_on=opts.retry_on,
                        give_up_on=opts.give_up_on,
                        classifier=opts.classifier,
                    )
                    if isinstance(exc, Retry):  # the body asked for a retry itself
                        failure = replace(failure, verdict=Verdict.TRANSIENT)
                    signals.attempt_failed.send(
                        sender=task,
                        task_id=request.id,
                        attempt=state.attempt,
                        verdict=failure.verdict,
                        cause=failure.cause,
                        exc=exc,
                        duration=time.monotonic() - started,
                    )
                    span.set("verdict", failure.verdict.value)
                    entry = f"#{state.attempt} {failure.verdict.value}: {failure.cause}"
                    if failure.verdict is Verdict.PERMANENT:
                        raise
                    if state.failures + 1 > limit:
                        state = state.with_entry(entry)
                        reason = f"retries exhausted (max_retries={opts.max_retries})"
                        signals.gave_up.send(
                            sender=task,
                            task_id=request.id,
                            attempt=state.attempt,
                            reason=reason,
                            exc=exc,
                            history=state.history,
                        )
                        raise GaveUp(
                            gave_up_message(reason=reason, state=state, trace_id=trace.trace_id)
                        ) from exc
                    line = retry_line(
                        verdict=failure.verdict.value,
                        cause=failure.cause,
                        attempt=state.attempt,
                        max_retries=opts.max_retries,
                        countdown=0.0,
                        trace_id=trace.trace_id,
                    )
                    signals.retry_scheduled.send(
                        sender=task,
                        task_id=request.id,
                        attempt=state.attempt,
                        countdown=0.0,
                        verdict=failure.verdict,
                        cause=failure.cause,
                        reason=line,
                    )
                    span.set("countdown", 0.0)
                    state = replace(state, failures=state.failures + 1).with_entry(entry)
                    continue
                span.set("verdict", "success")
                signals.attempt_succeeded.send(
                    sender=task,
                    task_id=request.id,
                    attempt=state.attempt,
                    duration=time.monotonic() - started,
                )
                return result
