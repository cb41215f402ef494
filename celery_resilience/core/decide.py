"""What happens next: the decisions of the attempt engine, from values alone.

One attempt meets the engine at these points, and at each the engine answers with a value
that the drivers (a worker, or eager mode) carry out:

================================  ===========================================================
point                             answers
================================  ===========================================================
:func:`on_wake`                   ``None`` (go on), :class:`Wait` (a split wait is not over),
                                  or :class:`GiveUp` (the deadline would pass meanwhile)
:func:`before_gate`               ``None`` (ask the gates), or :class:`GiveUp` (deadline passed)
:func:`ungated`                   :class:`Run` or :class:`GiveUp` (deadline passed), for an
                                  attempt with no gates to ask, or let in on a grant ahead
:func:`after_gate`                :class:`Run`, :class:`WaitInPlace` (a rate-limit slot a
                                  moment away), :class:`Wait` (deferred), :class:`GiveUp`,
                                  :class:`Refuse`, :class:`UseFallback` or :class:`Duplicate`
:func:`plan_failure`              a :class:`FailurePlan`: retry after a countdown, or not
:func:`after_failure`             :class:`Wait` (a retry), :class:`FailNow` or :class:`GiveUp`
:func:`unpublished`               :class:`GiveUp`: the broker would not take a wait's message
:func:`mark_after_publication`    the attempt lease's mark once a wait's message is sent
================================  ===========================================================

Nothing here reads a clock, draws a random number of its own, or does I/O: the store's
time comes in with its answers (``GateAnswer.now``, ``RecordAnswer.now``) or as ``now``,
and jitter is drawn from the ``rng`` passed in (tenacity's strategies draw from the
``random`` module, so seeding it makes a countdown reproducible).
"""

from __future__ import annotations

from dataclasses import replace

from celery_resilience.core.backoff import retry_countdown
from celery_resilience.core.classify import Failure, Verdict
from celery_resilience.core.decisions import (
    Attempt,
    Decision,
    Duplicate,
    FailNow,
    FailurePlan,
    GateName,
    GiveUp,
    Jitter,
    Refuse,
    Run,
    UseFallback,
    Wait,
    WaitInPlace,
)
from celery_resilience.core.errors import deadline_spent
from celery_resilience.core.gates import (
    AttemptMark,
    BreakerOutcome,
    BreakerState,
    Denial,
    GateAnswer,
    RecordAnswer,
)
from celery_resilience.core.keying import shown
from celery_resilience.core.ledger import AttemptState, deferral_line, gave_up_message, retry_line
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = [
    "EARLY",
    "IN_PLACE",
    "IN_PLACE_SLOTS",
    "REPUBLISH",
    "RUNNING_POLL",
    "after_failure",
    "after_gate",
    "before_gate",
    "broken",
    "mark_after_publication",
    "on_wake",
    "plan_failure",
    "ungated",
    "unpublished",
]

#: A task woken this early (seconds) before its time is let through rather than re-queued.
EARLY = 0.05
#: The longest rate-limit wait taken where the attempt is (a :class:`WaitInPlace`) rather
#: than through the broker, whose deferred message would queue behind the whole backlog;
#: and at most :data:`IN_PLACE_SLOTS` of the limit's intervals, so that only a few of one
#: limit's tasks wait in pool processes at a time (slots are an interval apart).
IN_PLACE = 0.5
IN_PLACE_SLOTS = 5
#: Countdown of a retry published again by a redelivered copy of its failed attempt.
REPUBLISH = 0.5
#: How long a copy of an attempt running elsewhere first waits before it looks again
#: (doubled at each look, never past the running copy's lease).
RUNNING_POLL = 10.0
#: The shortest deferral.
_MIN_DEFERRAL = 0.01

#: The failure of an attempt whose worker stopped while publishing its retry.
_WORKER_STOPPED = Failure(
    verdict=Verdict.TRANSIENT,
    cause="its worker stopped while publishing the retry",
    status=None,
    host=None,
    exc_type="WorkerLost",
    retry_after=None,
    reached_server=False,
)

_BREAKER_OUTCOME: dict[Verdict, BreakerOutcome] = {
    Verdict.TRANSIENT: "failure",
    Verdict.RATE_LIMITED: "neutral",
    Verdict.PERMANENT: "success",
}


def _quote(name: str) -> str:
    return repr(name)


def _label(policy: CircuitBreaker | RateLimit | ConcurrencyLimit) -> str:
    """A policy's quoted name, and the key of a keyed one (escaped): ``'crm'[acme]``."""
    return shown(_quote(policy.name), policy.bound_key)


def _wait(
    attempt: Attempt,
    *,
    wait: float,
    now: float,
    gate: GateName,
    name: str | None,
    why: str,
    state: AttemptState | None = None,
) -> Wait | GiveUp:
    """A deferral of ``wait`` seconds, unless the deadline would pass meanwhile."""
    state = attempt.state if state is None else state
    wait = max(wait, _MIN_DEFERRAL)
    remaining = attempt.remaining(now)
    if remaining is not None and wait >= remaining:
        reason = f"deadline of {attempt.options.deadline:g} s would pass while deferred ({why})"
        return _give_up(replace(attempt, state=state), reason, None)
    state = replace(state, deferrals=state.deferrals + 1)
    line = deferral_line(
        why=why,
        attempt=state.attempt,
        max_retries=attempt.options.max_retries,
        countdown=wait,
        trace_id=attempt.trace_id,
    )
    return Wait(countdown=wait, line=line, state=state, gate=gate, name=name)


def _give_up(attempt: Attempt, reason: str, failure: Failure | None) -> GiveUp:
    state = attempt.state
    if failure is not None:
        state = state.with_entry(f"#{state.attempt} {failure.verdict.value}: {failure.cause}")
    message = gave_up_message(reason=reason, state=state, trace_id=attempt.trace_id)
    return GiveUp(reason=reason, message=message, state=state, failure=failure)


def broken(attempt: Attempt, error: BaseException) -> GiveUp:
    """The task's own classifier or backoff strategy raised ``error``: give up now (a
    retry could not be decided), saying which type of error it was."""
    reason = (
        f"its classifier or backoff strategy raised {type(error).__name__}; "
        "no retry could be decided"
    )
    return _give_up(attempt, reason, None)


def on_wake(attempt: Attempt, now: float) -> Wait | GiveUp | None:
    """A task woken before the end of a wait that was split in legs waits again."""
    not_before = attempt.state.not_before
    if not_before is None or now >= not_before - EARLY:
        return None
    return _wait(
        attempt,
        wait=not_before - now,
        now=now,
        gate="schedule",
        name=None,
        why="waiting out a long countdown in legs below the broker's timeouts",
    )


def before_gate(attempt: Attempt, now: float) -> GiveUp | None:
    """A task whose deadline has passed gives up before it asks the gates (it takes no
    rate-limit slot, probe or concurrency slot it could not use)."""
    if attempt.deadline_passed(now):
        return _give_up(attempt, f"deadline of {attempt.options.deadline:g} s passed", None)
    return None


def after_gate(
    attempt: Attempt,
    answer: GateAnswer,
    rng: Jitter,
    *,
    republish_lost_retry: bool = True,
    may_wait_in_place: bool = True,
) -> Decision:
    """What the gates' answer means for this attempt.

    ``republish_lost_retry``: whether a copy that finds its attempt failed and retried
    publishes that retry again (a copy its worker left behind may be the only one that
    can); False for a second publication of the same message, whose first copy did.
    ``may_wait_in_place``: whether a booked rate-limit slot at most :data:`IN_PLACE` seconds
    (and :data:`IN_PLACE_SLOTS` intervals of the limit) away is waited for where the attempt
    is; False once it has waited so: the next wait is deferred.
    """
    options, state = attempt.options, attempt.state
    if answer.denial is Denial.DONE or (
        answer.denial is Denial.RETRIED and not republish_lost_retry
    ):
        return Duplicate()
    if answer.denial is Denial.RUNNING:
        # the copy running elsewhere marks the attempt done when it ends: look again soon,
        # not only when its lease (up to the broker's visibility timeout) runs out; each
        # look waits twice as long as the last, so a holder that died costs few looks
        poll = RUNNING_POLL * 2 ** min(state.deferrals, 8)
        countdown = min(answer.wait, poll) + REPUBLISH
        state = replace(state, deferrals=state.deferrals + 1)
        line = deferral_line(
            why=f"attempt {state.attempt} is running elsewhere (a redelivered message)",
            attempt=state.attempt,
            max_retries=options.max_retries,
            countdown=countdown,
            trace_id=attempt.trace_id,
        )
        return Wait(countdown=countdown, line=line, state=state, gate="duplicate", quiet=True)
    if answer.denial is Denial.RETRIED:
        failure = _WORKER_STOPPED
        line = retry_line(
            verdict=failure.verdict.value,
            cause=failure.cause,
            attempt=state.attempt,
            max_retries=options.max_retries,
            countdown=REPUBLISH,
            trace_id=attempt.trace_id,
        )
        state = replace(state, failures=state.failures + 1).with_entry(
            f"#{state.attempt} failed; its retry was published again after its worker stopped"
        )
        return Wait(
            countdown=REPUBLISH,
            line=line,
            state=state,
            gate="duplicate",
            failure=failure,
            quiet=True,
        )
    attempt = _admitted(attempt, answer.now)
    if attempt.deadline_passed(answer.now):
        return _give_up(attempt, f"deadline of {options.deadline:g} s passed", None)
    if answer.allowed:
        return Run(state=attempt.state, probe=answer.probe)
    return _denied(attempt, answer, rng, may_wait_in_place=may_wait_in_place)


def ungated(attempt: Attempt, now: float) -> Run | GiveUp:
    """What an attempt that has no gate to ask (no breaker, concurrency limit, rate limit
    or attempt lease), or is let in on a grant ahead, does at ``now``: as
    :func:`after_gate` with every gate letting it through, no probe among them."""
    attempt = _admitted(attempt, now)
    if attempt.deadline_passed(now):
        return _give_up(attempt, f"deadline of {attempt.options.deadline:g} s passed", None)
    return Run(state=attempt.state, probe=False)


def _admitted(attempt: Attempt, now: float) -> Attempt:
    """``attempt`` as the gates let it in at ``now``: the task's clock started on its first
    attempt, and a booked rate-limit slot used up."""
    state = attempt.state
    if state.started is not None and state.slot is None:
        return attempt
    started = state.started if state.started is not None else now
    return Attempt(attempt.options, state.admitted(started), attempt.trace_id)


def _breaker_words(answer: GateAnswer) -> str:
    if answer.breaker_state is BreakerState.FORCED_OPEN:
        return "forced open"
    if answer.denial is Denial.BREAKER_HALF_OPEN:
        return "half-open, probe in flight"
    return f"open, half-open in {answer.wait:.1f} s"


def _budget_words(breaker: CircuitBreaker, answer: GateAnswer) -> str:
    sent, allowed = answer.retries or (0, 0.0)
    return (
        f"retry budget of breaker {_quote(breaker.name)} spent "
        f"({sent} retries in {breaker.window:g} s, {allowed:g} allowed)"
    )


def _denied(
    attempt: Attempt, answer: GateAnswer, rng: Jitter, *, may_wait_in_place: bool
) -> Decision:
    """Defer the task (the default), or apply the breaker's ``on_open`` policy."""
    options, state = attempt.options, attempt.state
    denial, breaker = answer.denial, options.breaker
    refused = denial in (Denial.BREAKER_OPEN, Denial.BREAKER_HALF_OPEN)
    if breaker is not None and refused and options.on_open != "defer":
        why = f"breaker {_label(breaker)} {_breaker_words(answer)}"
        if options.on_open == "fail":
            state = state.with_entry(f"#{state.attempt} refused: {why}")
            message = f"{why}; on_open='fail'; trace {attempt.trace_id}"
            return Refuse(why=why, message=message, state=state)
        return UseFallback(why=why)
    if denial is Denial.RETRY_BUDGET and breaker is not None and breaker.retry_exhausted != "wait":
        return _give_up(attempt, _budget_words(breaker, answer), None)
    wait = answer.wait
    # Jitter spreads the woken tasks, but must not push one past its deadline when the
    # gate itself would let it through in time.
    remaining = attempt.remaining(answer.now)
    room = max(remaining - wait - 0.5, 0.0) if remaining is not None else float("inf")
    limiter, pool = options.limiter, options.concurrency
    gate: GateName
    name: str | None = None
    if denial is Denial.BREAKER_OPEN and breaker is not None:
        gate, name = "breaker", breaker.name
        if answer.breaker_state is BreakerState.FORCED_OPEN:
            why = f"breaker {_label(breaker)} forced open"
        else:
            why = f"breaker {_label(breaker)} open, half-open in {wait:.1f} s"
        wait += min(rng.uniform(0.0, breaker.open_for), room)
    elif denial is Denial.BREAKER_HALF_OPEN and breaker is not None:
        gate, name = "breaker", breaker.name
        why = f"breaker {_label(breaker)} half-open, probe in flight"
        # a probe's slot lasts as long as its body may run, but it mostly ends sooner
        wait = min(wait, breaker.lease) + min(rng.uniform(0.0, 0.5 * breaker.lease), room)
    elif denial is Denial.THROTTLED and breaker is not None:
        gate, name = "breaker", breaker.name
        why = (
            f"breaker {_label(breaker)} sheds {answer.shed:.0%} of calls "
            f"(the upstream accepts too few)"
        )
        # the share is worked out again at every call: come back within a bucket or so,
        # less often the more often this task was deferred (1x, 2x, 4x)
        backlog = 2 ** min(state.deferrals, 2)
        wait = wait * backlog * rng.uniform(0.5, 1.5)
    elif denial is Denial.RETRY_BUDGET and breaker is not None:
        gate, name = "retry_budget", breaker.name
        why = _budget_words(breaker, answer)
        # like a shed call: come back within a bucket or so, less often the longer it waits
        backlog = 2 ** min(state.deferrals, 2)
        wait = wait * backlog * rng.uniform(0.5, 1.5)
    elif denial is Denial.RATE_LIMITED and limiter is not None:
        gate, name = "rate_limit", limiter.name
        why = f"rate limit {_label(limiter)} ({limiter.rate}) full, slot in {wait:.2f} s"
        if answer.slot is not None:
            state = replace(state, slot=(limiter.name, answer.slot))
            reach = min(IN_PLACE, IN_PLACE_SLOTS * limiter.interval)
            if may_wait_in_place and wait <= reach and (remaining is None or wait < remaining):
                seconds = max(wait, _MIN_DEFERRAL)
                return WaitInPlace(seconds=seconds, limiter=limiter.name, state=state)
    elif denial is Denial.CONCURRENCY_FULL and pool is not None:
        gate, name = "concurrency", pool.name
        why = f"concurrency {_label(pool)} full ({pool.limit} in flight)"
        # a queue of waiters polls less often the longer it waits (1x, 2x, 4x)
        backlog = 2 ** min(state.deferrals, 2)
        wait = wait * backlog * rng.uniform(1.0, 1.5)
    else:
        gate = "backend"
        why = "state store unreachable and resilience_fallback is 'defer'"
        wait *= rng.uniform(1.0, 1.5)
    decision = _wait(attempt, wait=wait, now=answer.now, gate=gate, name=name, why=why, state=state)
    if isinstance(decision, Wait) and gate == "breaker" and denial is not Denial.THROTTLED:
        return replace(decision, breaker=name)
    return decision


def plan_failure(
    attempt: Attempt, failure: Failure, *, now: float, exc: BaseException | None = None
) -> FailurePlan:
    """Retry or not, decided before the outcome is reported (see :class:`FailurePlan`).

    Raises what the task's backoff strategy raises (the driver gives the grants back).
    A call that the task's session did not start for want of time (``DeadlineSpent``,
    whatever its verdict) gives up as by the deadline, without charging the breaker.
    """
    options = attempt.options
    if deadline_spent(exc):
        left = attempt.remaining(now)
        spare = f"{max(left, 0.0):.3f} s left" if left is not None else "no time left"
        what = "deadline" if options.deadline is None else f"deadline of {options.deadline:g} s"
        return FailurePlan(
            failure=failure,
            countdown=None,
            give_up=f"{what} passed ({spare}, too little for a call)",
            mark="done",
            breaker_outcome="neutral",
            pause=None,
            deadline_spent=True,
        )
    pause = (
        failure.retry_after
        if failure.verdict is Verdict.RATE_LIMITED and failure.retry_after
        else None
    )
    spent = attempt.state.failures + 1
    give_up: str | None = None
    countdown: float | None = None
    if failure.verdict is not Verdict.PERMANENT:
        if options.max_retries is not None and spent > options.max_retries:
            give_up = f"retries exhausted (max_retries={options.max_retries})"
        else:
            countdown = retry_countdown(
                options.backoff,
                spent,
                retry_after=failure.retry_after,
                remaining=attempt.remaining(now),
                exc=exc,
            ).seconds
            if countdown is None:
                give_up = f"deadline of {options.deadline:g} s leaves no room for another attempt"
    return FailurePlan(
        failure=failure,
        countdown=countdown,
        give_up=give_up,
        mark="retried" if countdown is not None else "done",
        breaker_outcome=_BREAKER_OUTCOME[failure.verdict],
        pause=pause,
    )


def after_failure(
    attempt: Attempt, plan: FailurePlan, record: RecordAnswer, rng: Jitter
) -> Wait | FailNow | GiveUp:
    """The failed attempt's end, once its outcome is reported."""
    failure, state = plan.failure, attempt.state
    if plan.deadline_spent:
        state = state.with_entry(f"#{state.attempt} deadline: {failure.cause}")
        return _give_up(replace(attempt, state=state), plan.give_up or "deadline passed", None)
    if failure.verdict is Verdict.PERMANENT:
        return FailNow(failure, state.with_entry(f"#{state.attempt} permanent: {failure.cause}"))
    if plan.countdown is None:
        return _give_up(attempt, plan.give_up or "no retry possible", failure)
    seconds = _not_before_half_open(attempt, plan.countdown, record, rng)
    breaker = attempt.options.breaker
    waits_for = breaker.name if breaker is not None and seconds != plan.countdown else None
    line = retry_line(
        verdict=failure.verdict.value,
        cause=failure.cause,
        attempt=state.attempt,
        max_retries=attempt.options.max_retries,
        countdown=seconds,
        trace_id=attempt.trace_id,
    )
    spent = state.failures + 1
    state = replace(state, failures=spent).with_entry(
        f"#{spent} {failure.verdict.value}: {failure.cause}"
    )
    return Wait(countdown=seconds, line=line, state=state, failure=failure, breaker=waits_for)


def _not_before_half_open(
    attempt: Attempt, seconds: float, record: RecordAnswer, rng: Jitter
) -> float:
    """A retry due while the breaker (opened by this very failure, or before) is still
    open would only be deferred on waking: schedule it for the half-open time instead,
    spread like a deferral, when the deadline allows."""
    breaker = attempt.options.breaker
    if breaker is None or record.breaker_state is not BreakerState.OPEN:
        return seconds
    floor = record.open_until - record.now + rng.uniform(0.0, breaker.open_for)
    remaining = attempt.remaining(record.now)
    if seconds >= floor or (remaining is not None and floor >= remaining):
        return seconds
    return floor


def unpublished(attempt: Attempt, wait: Wait, error: str) -> GiveUp:
    """The broker refused the message that carries ``wait`` (``error`` names why) for as
    long as the publish may be retried: the task fails for good, with its ledger and a
    dead letter, rather than vanish with a message acknowledged when it started."""
    what = "retry" if wait.retry else "deferral"
    reason = f"its {what} could not be published ({error})"
    # the wait's ledger (this attempt's failure in it), counted as the attempts that ran
    ran = attempt.state
    state = replace(wait.state, failures=ran.failures, deferrals=ran.deferrals)
    message = gave_up_message(reason=reason, state=state, trace_id=attempt.trace_id)
    return GiveUp(reason=reason, message=message, state=state, failure=wait.failure)


def mark_after_publication(wait: Wait) -> AttemptMark | None:
    """What the attempt lease says once ``wait``'s message is in the broker: "done" after
    a retry (its failed attempt left the lease "retried", so that a copy of its message
    redelivered after a lost worker would publish the retry again; now that it is
    published, such a copy has nothing to do: it neither publishes a second retry nor
    writes RETRY over the final state the next attempt may have stored). Nothing after a
    deferral: its attempt held no lease."""
    return "done" if wait.retry else None
