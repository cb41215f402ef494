"""What a test sees of resilient tasks: one record per attempt, from the public signals.

:class:`Attempts` listens to :mod:`celery_resilience.signals` while it is open and keeps
an :class:`AttemptRecord` per attempt (a deferral is a turn of its own, with the same
attempt number as the attempt that follows it). Its ``assert_*`` methods fail with the
whole story of the task, one line per attempt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from celery_resilience import signals
from celery_resilience.testing.steps import TaskSteps

if TYPE_CHECKING:
    from celery_resilience.integration.task import ResilientTask

__all__ = ["AttemptRecord", "Attempts", "DecisionName"]

#: What became of one attempt. ``None``: it ended without a decision signal (a fallback
#: answered, ``on_open="fail"`` refused it, or the body raised Celery's own ``Retry``,
#: ``Ignore`` or ``Reject``).
DecisionName = Literal["succeeded", "retried", "deferred", "failed", "gave_up"]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of one task, as its signals told it.

    ``decision``: what became of it (:data:`DecisionName`, or None). ``verdict``: the
    failure's class (``"transient"``, ``"permanent"``, ``"rate_limited"``) when the body
    failed. ``reason``: why, in words (the failure's cause; a deferral's gate and wait; why
    the task gave up). ``countdown``: the wait before the next turn. ``gate`` and ``name``:
    what deferred it (``"breaker"``, ``"payments"``). ``line``: its ledger line (retries and
    deferrals). ``history``: the attempt history of a task that gave up, one line per attempt.
    """

    task_name: str
    task_id: str
    attempt: int
    decision: DecisionName | None = None
    verdict: str | None = None
    reason: str | None = None
    countdown: float | None = None
    gate: str | None = None
    name: str | None = None
    line: str | None = None
    history: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a failure message: number, decision and the words that say why."""
        words = self.line or self.reason or ""
        return f"#{self.attempt} {self.decision or 'no decision'}" + (f": {words}" if words else "")


class Attempts:
    """The attempts of resilient tasks run while it listens (``with attempts.recording():``).

    ``attempts.of(task)`` (a task, a result, a task ID or a task name) narrows it to one
    task; iterate, index or ``len()`` it like a list of :class:`AttemptRecord`.
    """

    def __init__(self, records: Sequence[AttemptRecord] = ()) -> None:
        self._records: list[AttemptRecord] = list(records)
        self._listening = False

    # -- recording -------------------------------------------------------------------

    @contextmanager
    def recording(self) -> Iterator[Attempts]:
        """Listen inside the block (:meth:`start`, then :meth:`stop`)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        """Listen to the signals of every resilient task in this process."""
        if self._listening:
            return
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False)
        self._listening = True

    def stop(self) -> None:
        """Stop listening; the records stay."""
        if not self._listening:
            return
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)
        self._listening = False

    def _receivers(self) -> list[tuple[Any, Any]]:
        return [
            (signals.attempt_started, self._on_started),
            (signals.attempt_succeeded, self._on_succeeded),
            (signals.attempt_failed, self._on_failed),
            (signals.retry_scheduled, self._on_retry),
            (signals.deferred, self._on_deferred),
            (signals.gave_up, self._on_gave_up),
        ]

    def _on_started(
        self, sender: Any = None, *, task_id: str = "?", attempt: int = 0, **_: Any
    ) -> None:
        name = str(getattr(sender, "name", sender))
        self._records.append(AttemptRecord(task_name=name, task_id=str(task_id), attempt=attempt))

    def _update(self, task_id: str, **changes: Any) -> None:
        for index in range(len(self._records) - 1, -1, -1):
            if self._records[index].task_id == str(task_id):
                self._records[index] = replace(self._records[index], **changes)
                return

    def _on_succeeded(self, sender: Any = None, *, task_id: str = "?", **_: Any) -> None:
        self._update(task_id, decision="succeeded")

    def _on_failed(
        self,
        sender: Any = None,
        *,
        task_id: str = "?",
        verdict: Any = None,
        cause: str = "",
        **_: Any,
    ) -> None:
        self._update(
            task_id, decision="failed", verdict=getattr(verdict, "value", verdict), reason=cause
        )

    def _on_retry(
        self,
        sender: Any = None,
        *,
        task_id: str = "?",
        countdown: float = 0.0,
        reason: str = "",
        **_: Any,
    ) -> None:
        self._update(task_id, decision="retried", countdown=countdown, line=reason)

    def _on_deferred(
        self,
        sender: Any = None,
        *,
        task_id: str = "?",
        gate: str | None = None,
        name: str | None = None,
        countdown: float = 0.0,
        reason: str = "",
        **_: Any,
    ) -> None:
        why = reason.removeprefix("deferred: ").split("; attempt ", 1)[0]
        self._update(
            task_id,
            decision="deferred",
            gate=gate,
            name=name,
            countdown=countdown,
            reason=why,
            line=reason,
        )

    def _on_gave_up(
        self,
        sender: Any = None,
        *,
        task_id: str = "?",
        reason: str = "",
        history: Sequence[str] = (),
        **_: Any,
    ) -> None:
        self._update(task_id, decision="gave_up", reason=reason, history=tuple(history))

    def step(self, task: ResilientTask, *args: Any, **kwargs: Any) -> TaskSteps:
        """A call of ``task`` whose attempts run one at a time (:class:`TaskSteps`)."""
        return TaskSteps(task, args, kwargs, self)

    # -- reading ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[AttemptRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> AttemptRecord:
        return self._records[index]

    def __repr__(self) -> str:
        return f"Attempts({self.describe()})"

    def of(self, what: object) -> Attempts:
        """The attempts of one task: ``what`` is a task (by name), a result or a task ID."""
        if isinstance(what, str):
            chosen = [r for r in self._records if what in (r.task_id, r.task_name)]
        elif hasattr(what, "run") and hasattr(what, "name"):
            chosen = [r for r in self._records if r.task_name == what.name]
        elif hasattr(what, "id"):
            chosen = [r for r in self._records if r.task_id == str(what.id)]
        else:
            raise TypeError(f"Attempts.of() takes a task, a result or a task ID, not {what!r}")
        return Attempts(chosen)

    @property
    def decisions(self) -> list[DecisionName | None]:
        """The decision of each attempt, in order."""
        return [r.decision for r in self._records]

    @property
    def ledger(self) -> list[str]:
        """The ledger lines (retries and deferrals), in order: what Flower shows."""
        return [r.line for r in self._records if r.line]

    @property
    def countdowns(self) -> list[float]:
        """The countdown of each retry and deferral, in order."""
        return [r.countdown for r in self._records if r.countdown is not None]

    def describe(self) -> str:
        """The attempts, one per line (a task's ID when there are several tasks)."""
        if not self._records:
            return "no attempts were recorded"
        several = len({r.task_id for r in self._records}) > 1
        return "\n".join(
            f"  {r.task_name}[{r.task_id}] {r.describe()}" if several else f"  {r.describe()}"
            for r in self._records
        )

    # -- assertions ------------------------------------------------------------------

    def _fail(self, expected: str) -> AssertionError:
        return AssertionError(f"expected {expected}, but the attempts were:\n{self.describe()}")

    def assert_decisions(self, *expected: DecisionName | None) -> None:
        """The attempts' decisions are exactly ``expected``, in order."""
        __tracebackhide__ = True
        if self.decisions != list(expected):
            raise self._fail("decisions " + ", ".join(str(d) for d in expected))

    def assert_retried(self, times: int, *, then: DecisionName = "succeeded") -> None:
        """Retried ``times`` times after failures, then ``then`` (deferrals in between are
        not counted: they spend no retry)."""
        __tracebackhide__ = True
        seen = [d for d in self.decisions if d != "deferred"]
        if seen != ["retried"] * times + [then]:
            raise self._fail(f"{times} retr{'y' if times == 1 else 'ies'} then {then}")

    def assert_deferred_by(
        self, gate: str, name: str | None = None, *, times: int | None = None
    ) -> None:
        """Deferred by ``gate`` (``"breaker"``, ``"rate_limit"``, ``"concurrency"``...), by the
        policy ``name`` if given; exactly ``times`` times if given, else at least once."""
        __tracebackhide__ = True
        found = [
            r
            for r in self._records
            if r.decision == "deferred" and r.gate == gate and (name is None or r.name == name)
        ]
        what = f"{gate} {name!r}" if name is not None else gate
        if times is None and not found:
            raise self._fail(f"a deferral by {what}")
        if times is not None and len(found) != times:
            raise self._fail(f"{times} deferral(s) by {what}, not {len(found)}")

    def assert_gave_up(self, reason: str | None = None) -> None:
        """The last attempt gave up, its reason containing ``reason`` if given."""
        __tracebackhide__ = True
        last = self._records[-1] if self._records else None
        if last is None or last.decision != "gave_up" or (reason or "") not in (last.reason or ""):
            raise self._fail("to give up" + (f" ({reason!r})" if reason else ""))

    def assert_ledger(self, *fragments: str) -> None:
        """One ledger line per fragment, in order, each containing its fragment
        (``"transient: HTTP 503"``, ``"deferred: breaker 'payments' open"``)."""
        __tracebackhide__ = True
        lines = self.ledger
        if len(lines) != len(fragments) or not all(
            fragment in line for fragment, line in zip(fragments, lines, strict=False)
        ):
            wanted = "\n".join(f"  ...{fragment}..." for fragment in fragments) or "  (none)"
            raise self._fail(f"ledger lines containing\n{wanted}\n")
