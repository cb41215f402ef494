"""The worker driver: one attempt per message, a wait carried out through the broker.

The attempt itself is :func:`~celery_resilience.integration.attempt.run_traced`; this module
gives it the shared gates (Redis, through the app's runtime) and an attempt lease for
redelivered copies, and turns a :class:`~celery_resilience.core.decisions.Wait` into a
parked entry (a long wait, where a durable place exists) or a message re-published with
``Task.retry`` (in legs below the broker's timeouts), the task's own counters in its
headers.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, cast

from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger
from kombu.utils.functional import retry_over_time

from celery_resilience.core import decide
from celery_resilience.core import headers as names
from celery_resilience.core.errors import Deferred, RetryScheduled
from celery_resilience.core.gates import OutcomeReport
from celery_resilience.integration.attempt import Unpublished, run_traced
from celery_resilience.integration.flow import Done, Lease
from celery_resilience.integration.lost import owner_of
from celery_resilience.integration.message import incoming_state, incoming_trace, nonce_of
from celery_resilience.integration.parking import message_for, parked_set_for
from celery_resilience.integration.runtime import Runtime, runtime_for
from celery_resilience.observability.tracing import AttemptInfo, TraceContext, hold_attempt
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.parked import ParkRefusedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from celery.app.task import Context

    from celery_resilience.core.decisions import Wait
    from celery_resilience.integration.task import ResilientTask
    from celery_resilience.state.parked import ParkReason

__all__ = ["run_in_worker", "time_limit_of"]

logger = get_task_logger("celery_resilience")


def time_limit_of(
    task: ResilientTask,
    request: Context,
    app_limits: tuple[float | None, float | None] | None = None,
) -> float | None:
    """The longest time limit (hard or soft) of this message, task or app, if any;
    ``app_limits`` are the app's (hard, soft), when already read from its configuration."""
    asked_hard, asked_soft = request.timelimit or (None, None)
    if app_limits is None:
        conf = task.app.conf
        app_limits = (conf.task_time_limit, conf.task_soft_time_limit)
    hard = asked_hard or task.time_limit or app_limits[0]
    soft = asked_soft or task.soft_time_limit or app_limits[1]
    if not (hard or soft):  # the common case: no limit anywhere
        return None
    return max(float(x) for x in (hard, soft) if x)


def _lease(
    task: ResilientTask, request: Context, rt: Runtime, attempt: int, time_limit: float | None
) -> Lease | None:
    """The attempt lease against copies of this message: for acks_late tasks (a lost
    worker leaves its message to be delivered again), for a message released from the
    parked set (a releaser that died while publishing leaves it published twice), or for
    every task when ``resilience_duplicate_guard`` is "always". It lasts the task's time limit, else
    ``resilience_attempt_lease``, and never less than the Redis broker's visibility
    timeout (no copy can be redelivered sooner); a finished attempt is remembered as long
    as a copy may still come."""
    settings = rt.settings
    released = names.PARKED in (request.headers or {})  # a double release is kept out too
    guarded = settings.duplicate_guard == "always" or bool(task.acks_late)
    if not (guarded or released):
        return None
    seconds = time_limit + 5.0 if time_limit is not None else settings.attempt_lease
    visibility = settings.visibility_timeout
    return Lease(
        key=settings.keys.attempt(request.id or "?", attempt, nonce_of(request)),
        seconds=seconds if visibility is None else max(seconds, visibility),
        mark_ttl=visibility + 60.0 if visibility is not None else 600.0,
        republish_lost_retry=guarded,
        owner=owner_of(os.getpid()),
    )


def _park_reason(wait: Wait) -> ParkReason | None:
    """Why a wait is parked, or None for a wait that is never parked."""
    if wait.breaker is not None:
        return "breaker_open"
    if wait.failure is not None:
        return "retry_after" if wait.failure.retry_after else "backoff"
    return _PARK_REASONS.get(wait.gate or "")


_PARK_REASONS: dict[str, ParkReason] = {
    "breaker": "breaker_open",
    "rate_limit": "rate_limited",
    "concurrency": "concurrency",
    "schedule": "schedule",
}


_PARK_ERRORS: tuple[type[BaseException], ...] = (ParkRefusedError, *STORE_ERRORS)


def _park(
    task: ResilientTask,
    request: Context,
    rt: Runtime,
    wait: Wait,
    *,
    headers: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retries: int,
) -> bool:
    """Park a long wait outside the workers (docs/parking.md); False when it cannot be
    parked (a short wait, parking off or nowhere durable enough, arguments that are not
    JSON, the parked set unreachable), and the wait stays a countdown."""
    reason = _park_reason(wait)
    after = rt.settings.park_after
    if reason is None or after <= 0 or wait.countdown <= after:
        return False
    parked = parked_set_for(task.app)
    if parked is None:
        return False
    message = message_for(task, request, args, kwargs, headers, retries=retries)
    if message is None:
        return False
    try:
        parked.park(
            task_name=task.name,
            task_id=request.id or "?",
            reason=reason,
            delay=wait.countdown,
            message=message,
            breaker=wait.breaker,
        )
    except _PARK_ERRORS as exc:
        logger.warning(
            "celery-resilience: a wait of %.1f s stays a countdown (not parked: %s)",
            wait.countdown,
            type(exc).__name__,
        )
        return False
    return True


def _reschedule(
    task: ResilientTask,
    request: Context,
    rt: Runtime,
    wait: Wait,
    *,
    trace: TraceContext,
    span_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    lease: Lease | None,
) -> NoReturn:
    """Send the task back for ``wait.countdown`` seconds, with its counters and trace in
    the headers: parked outside the workers when the wait is long (and a durable place
    exists), else as a countdown message, in legs below the broker's timeouts. Once it is
    sent, the attempt lease says so (a copy of this message then has nothing to do), and
    a copy's own wait ends without a state of the task's (:func:`_sent`)."""
    state = wait.state
    # Task.retry replaces the custom headers: start from this message's own, minus
    # RabbitMQ's x-death bookkeeping (as Celery's own retry does).
    headers = dict(request.as_execution_options().get("headers") or {})
    headers.pop(names.BOOKED, None)  # a reservation serves one delivery (the state has it)
    if not wait.quiet:  # a copy that comes back to look again keeps its guard
        headers.pop(names.PARKED, None)  # a release serves one publication
    headers[names.STATE] = state.to_header()
    headers[names.TRACE] = TraceContext(trace.trace_id, span_id, trace.sampled).traceparent()
    # the publication keeps its token ("-" when its publisher set none), so that every copy
    # of a later attempt, however it was published again, asks for the same lease
    headers[names.NONCE] = nonce_of(request)
    # Celery publishes request.retries + 1 and compares it with the task's class-level
    # max_retries: make it count failures only (deferrals spend no retry), and never
    # past that class-level bound, which a named policy may exceed.
    ceiling = task.max_retries
    counted = state.failures if ceiling is None else min(state.failures, ceiling)
    reason = RetryScheduled(wait.line) if wait.retry else Deferred(wait.line)
    if _park(task, request, rt, wait, headers=headers, args=args, kwargs=kwargs, retries=counted):
        # Published again by a releaser when due: end this attempt as Celery's RETRY.
        _sent(rt, wait, lease, Retry(exc=reason, when=wait.countdown))  # type: ignore[arg-type]  # a float is a Real
    cap = rt.settings.countdown_cap
    leg = wait.countdown
    if cap is not None and wait.countdown > cap:
        leg = cap
        # a copy of an attempt seen before looks again sooner instead: a leg's wake-up is
        # no copy's any more, and would write RETRY over whatever state the attempt made
        if not wait.quiet:
            headers[names.STATE] = replace(
                state, not_before=rt.estimated_now() + wait.countdown
            ).to_header()
    request.retries = counted - 1
    _sent(rt, wait, lease, _publish(task, rt, wait, reason, countdown=leg, headers=headers))


def _sent(rt: Runtime, wait: Wait, lease: Lease | None, retry: Retry) -> NoReturn:
    """``wait``'s message is in the broker: leave the mark that says so on the attempt
    lease, then end the attempt as Celery's RETRY; a wait that is not stored (a copy's, a
    split wait's next leg) ends without writing the task's state, which may be final by
    now."""
    mark = decide.mark_after_publication(wait)
    if mark is not None and lease is not None:
        rt.record(
            OutcomeReport(
                holder=lease.key, attempt_key=lease.key, mark_ttl=lease.mark_ttl, attempt_mark=mark
            )
        )
    if not wait.stored:
        raise Ignore()
    raise retry


def _publish(
    task: ResilientTask,
    rt: Runtime,
    wait: Wait,
    reason: Exception,
    *,
    countdown: float,
    headers: dict[str, Any],
) -> Retry:
    """Publish the task's next message (``Task.retry``); return Celery's ``Retry`` for it.
    A publish the broker refuses is offered again as
    ``resilience_publish_retry_policy`` says; past that, the message of an ``acks_late``
    task goes back to its queue where the broker itself puts it back (RabbitMQ), else a
    copy of an attempt running elsewhere leaves the task to it, and any other task ends
    for good (:class:`Unpublished`): its message was acknowledged when it started, or
    kombu's Redis transport would push it back with the very command that failed."""
    policy = rt.settings.publish_retry
    what = "retry" if wait.retry else "deferral"

    def send() -> Retry:
        sent: Retry = task.retry(exc=reason, countdown=countdown, headers=headers, throw=False)
        return sent

    def refused(exc: Reject, intervals: Iterator[float], tries: int) -> float:
        pause = next(intervals)
        logger.warning(
            "celery-resilience: the broker refused the %s (%s); offered again in %.1f s (%d of %d)",
            what,
            _refusal(exc),
            pause,
            tries + 1,
            policy.max_retries,
        )
        return pause

    try:
        sent = retry_over_time(
            send,
            (Reject,),
            errback=cast("Any", refused),  # its stub has the wrong signature
            max_retries=policy.max_retries,
            interval_start=policy.interval_start,
            interval_step=policy.interval_step,
            interval_max=policy.interval_max,
        )
    except Reject as exc:
        why = _refusal(exc)
        logger.error(  # noqa: TRY400 - no traceback: the broker's text may hold its URL
            "celery-resilience: the broker refused the %s %d times (%s)",
            what,
            policy.max_retries + 1,
            why,
        )
        if task.acks_late and rt.settings.broker_requeues:
            # this message goes back to its queue; its copy knows what to do
            raise Reject(_cause(exc), requeue=True) from None
        if wait.quiet and not wait.retry:
            # a copy of an attempt that holds its lease elsewhere: the holder carries the
            # task (a FAILURE here could stand beside its success)
            raise Ignore() from None
        raise Unpublished(why) from None
    return sent


def _cause(exc: Reject) -> Exception:
    """The broker's error that ``Task.retry`` wrapped in ``exc``."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, Exception) else exc


def _refusal(exc: Reject) -> str:
    """What the broker's refusal was, as type names only (their text may hold a URL): the
    error and the one it wraps (kombu raises ``OperationalError`` from the client's)."""
    cause = _cause(exc)
    inner = cause.__cause__ or cause.__context__
    if inner is None or type(inner) is type(cause):
        return type(cause).__name__
    return f"{type(cause).__name__}: {type(inner).__name__}"


def run_in_worker(
    task: ResilientTask, request: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run one attempt of ``task`` on a worker (the request is already pushed)."""
    headers = dict(request.headers or {})
    state = incoming_state(headers)
    trace = incoming_trace(headers)
    rt = runtime_for(task.app)
    time_limit = time_limit_of(task, request, rt.time_limits)

    lease = _lease(task, request, rt, state.attempt, time_limit)

    def carry(wait: Wait, span_id: str) -> NoReturn:
        _reschedule(
            task,
            request,
            rt,
            wait,
            trace=trace,
            span_id=span_id,
            args=args,
            kwargs=kwargs,
            lease=lease,
        )

    outcome = run_traced(
        task,
        request,
        args,
        kwargs,
        options=task.resilience_options(),
        gates=rt,
        state=state,
        trace=trace,
        lease=lease,
        time_limit=time_limit,
        carry=carry,
        hold=_holder(task, request),
    )
    if not isinstance(outcome, Done):  # carry() re-publishes the task and raises
        raise TypeError("a wait was not carried out")
    return outcome.result


def _holder(task: ResilientTask, request: Context) -> Callable[[AttemptInfo], None]:
    """Keep an ended attempt current while Celery's request for it is: Celery logs the
    attempt's outcome (``succeeded in``, ``retry:``, ``raised``) and publishes its links
    after the task's own call returns, before it pops the request. Nothing to undo: the
    hold lapses with the request, and the next attempt's replaces it."""
    stack, ref = task.request_stack, weakref.ref(request)

    def still() -> bool:
        current = ref()
        return current is not None and stack.top is current

    return lambda info: hold_attempt(info, still)
