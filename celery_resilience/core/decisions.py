"""The decisions of the attempt engine, as values: what the drivers are told to do.

:mod:`celery_resilience.core.decide` computes them; the drivers carry them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from celery_resilience.core.classify import Failure
from celery_resilience.core.gates import AttemptMark, BreakerOutcome
from celery_resilience.core.ledger import AttemptState
from celery_resilience.core.options import TaskOptions

__all__ = [
    "Attempt",
    "Decision",
    "Duplicate",
    "FailNow",
    "FailurePlan",
    "GateName",
    "GiveUp",
    "Jitter",
    "Refuse",
    "Run",
    "UseFallback",
    "Wait",
    "WaitInPlace",
]

#: What made a task wait: a gate, a split wait ("schedule"), or a redelivered copy of an
#: attempt seen before ("duplicate"). A retry after a failure has no gate.
GateName = Literal[
    "schedule", "breaker", "retry_budget", "rate_limit", "concurrency", "backend", "duplicate"
]


class Jitter(Protocol):
    """Where jitter comes from: a ``random.Random``, or the ``random`` module itself."""

    def uniform(self, a: float, b: float) -> float:
        """A number drawn uniformly from ``[a, b]``."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt as the engine sees it: the options in force, the ledger, the trace."""

    options: TaskOptions
    state: AttemptState
    trace_id: str

    def remaining(self, now: float) -> float | None:
        """Seconds left of the deadline at ``now`` (None: no deadline, or not started)."""
        if self.options.deadline is None or self.state.started is None:
            return None
        return self.options.deadline - (now - self.state.started)

    def deadline_passed(self, now: float) -> bool:
        """Whether the deadline has passed at ``now``."""
        remaining = self.remaining(now)
        return remaining is not None and remaining <= 0


@dataclass(frozen=True, slots=True)
class Run:
    """The gates let the attempt through: run the body."""

    state: AttemptState
    probe: bool


@dataclass(frozen=True, slots=True)
class WaitInPlace:
    """Wait ``seconds`` where the attempt is, then ask the gates once more.

    For a rate-limit slot so near that sending the task back through the broker would
    cost more than the wait: a deferred message goes to the back of its queue, behind
    whatever backlog is there. ``limiter`` names the rate limit; ``state`` holds the
    booked slot the next ask claims.
    """

    seconds: float
    limiter: str
    state: AttemptState


@dataclass(frozen=True, slots=True)
class Wait:
    """Send the task back to the broker, to come again in ``countdown`` seconds.

    A deferral (``failure is None``) spends no retry; a retry (``failure`` set) has spent
    one. ``line`` is the ledger line (what Flower shows); ``state`` travels with the task.
    ``gate`` and ``name`` say what deferred it; ``quiet`` waits (a redelivered copy of an
    attempt seen before) are not reported as deferrals or retries.
    """

    countdown: float
    line: str
    state: AttemptState
    gate: GateName | None = None
    name: str | None = None
    failure: Failure | None = None
    quiet: bool = False
    #: The breaker whose opening sets the wait: the task may go when it lets it.
    breaker: str | None = None

    @property
    def retry(self) -> bool:
        """True for a failed attempt retried (not a deferral)."""
        return self.failure is not None

    @property
    def stored(self) -> bool:
        """Whether the wait is stored as the task's state (Celery's RETRY). Not a quiet
        wait's (the attempt it stands for owns the state), nor the next leg of a split
        wait's (the first leg stored it; a leg of a stale copy would overwrite a final
        state the attempt stored meanwhile)."""
        return not self.quiet and self.gate != "schedule"


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The task fails for good (``GaveUp``): retries or time ran out."""

    reason: str
    message: str
    state: AttemptState
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class FailNow:
    """A permanent failure: FAILURE now, with the body's own (redacted) exception."""

    failure: Failure
    state: AttemptState


@dataclass(frozen=True, slots=True)
class Refuse:
    """``on_open="fail"``: the breaker refused the call; the task fails now."""

    why: str
    message: str
    state: AttemptState


@dataclass(frozen=True, slots=True)
class UseFallback:
    """``on_open`` is a callable: its result is the task's result."""

    why: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A redelivered copy of an attempt that already finished: ignore it."""


Decision = Run | WaitInPlace | Wait | GiveUp | FailNow | Refuse | UseFallback | Duplicate


@dataclass(frozen=True, slots=True)
class FailurePlan:
    """What a failed attempt reports to the gates, decided before it reports.

    ``countdown`` is the retry's (None: no retry, then ``give_up`` says why, unless the
    failure is permanent). ``mark`` tells the attempt lease what follows, so that a copy
    redelivered after this worker died can publish the retry again.
    """

    failure: Failure
    countdown: float | None
    give_up: str | None
    mark: AttemptMark
    breaker_outcome: BreakerOutcome
    pause: float | None
    #: The body's session refused a call that could not finish before the deadline.
    deadline_spent: bool = False
