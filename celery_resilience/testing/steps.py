"""One task's attempts, run one at a time, so that a test can look between them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.app.task import Context
from celery.utils import uuid

from celery_resilience.integration.eager import EAGER_ATTEMPT_LIMIT, EagerTurns
from celery_resilience.integration.flow import Done

if TYPE_CHECKING:
    from celery_resilience.core.decisions import Wait
    from celery_resilience.integration.task import ResilientTask
    from celery_resilience.testing.attempts import AttemptRecord, Attempts

__all__ = ["TaskSteps"]


class TaskSteps:
    """The attempts of one call of ``task``, run by :meth:`next` one at a time, eagerly.

    Before each attempt after the first, the clock of the task's eager gates moves on by
    the wait the previous one asked for (as the broker would hold the message); a test may
    move it further, or run other tasks, in between. The task ends with ``result`` set, or
    with ``error`` (``GaveUp``, a permanent failure's own exception, ...), never raised.
    """

    def __init__(
        self, task: ResilientTask, args: tuple[Any, ...], kwargs: dict[str, Any], attempts: Attempts
    ) -> None:
        self.task = task
        self.attempts = attempts
        self.task_id = uuid()
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self._request = Context(
            {
                "id": self.task_id,
                "args": list(args),
                "kwargs": kwargs,
                "is_eager": True,
                "headers": {},
                "delivery_info": {"is_eager": True},
                "retries": 0,
            },
            called_directly=False,
        )
        self._turns = EagerTurns(task, self._request, args, kwargs)
        self._wait: Wait | None = None
        self._count = 0

    def next(self) -> AttemptRecord:
        """Run the next attempt (or deferral); its record."""
        __tracebackhide__ = True
        if self.done:
            story = self.attempts.of(self.task_id).describe()
            raise AssertionError(f"{self.task.name}[{self.task_id}] has ended:\n{story}")
        if self._wait is not None:
            self._turns.gates.skip(self._wait.countdown)
            self._wait = None
        self._count += 1
        self.task.request_stack.push(self._request)
        try:
            self._turn()
        finally:
            self.task.request_stack.pop()
        mine = self.attempts.of(self.task_id)
        if not len(mine):
            raise AssertionError(
                f"no attempt of {self.task.name} was recorded: is the Attempts recorder open?"
            )
        return mine[-1]

    def _turn(self) -> None:
        if self._count > EAGER_ATTEMPT_LIMIT:
            self.done, self.error = True, self._turns.exhausted()
            return
        try:
            outcome = self._turns.turn()
        except Exception as exc:  # noqa: BLE001 - a final failure ends the task, kept for the test
            self.done, self.error = True, exc
            return
        if isinstance(outcome, Done):
            self.done, self.result = True, outcome.result
        else:
            self._wait = outcome

    def run_to_end(self) -> Attempts:
        """Run the remaining attempts; the records of all of this task's attempts."""
        while not self.done:
            self.next()
        return self.attempts.of(self.task_id)
