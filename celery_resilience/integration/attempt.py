"""One attempt of a resilient task, in its span and log context: the drivers' entry.

Both drivers (:mod:`~celery_resilience.integration.worker`,
:mod:`~celery_resilience.integration.eager`) call :func:`run_traced`; what they do with a
:class:`~celery_resilience.core.decisions.Wait` is theirs.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Retry

from celery_resilience.core import decisions
from celery_resilience.integration.flow import Done, Flow, Gates, Lease
from celery_resilience.observability.otel import attempt_span
from celery_resilience.observability.tracing import (
    AttemptInfo,
    TraceContext,
    bind_attempt,
    safe_token,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery.app.task import Context

    from celery_resilience.core.ledger import AttemptState
    from celery_resilience.core.options import TaskOptions
    from celery_resilience.integration.task import ResilientTask

__all__ = ["Unpublished", "run_traced"]


class Unpublished(Exception):  # noqa: N818 - a condition, not an error of the caller's
    """Raised by a driver's ``carry`` when the broker would not take the wait's message,
    however often it was offered (``why``: the broker's error, by type names only): the
    attempt then ends the task for good."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@functools.lru_cache(maxsize=1024)
def _name_token(name: str) -> str:
    """A task's name made log-safe (once per name: a process runs few)."""
    return safe_token(name)


def run_traced(
    task: ResilientTask,
    request: Context,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    options: TaskOptions,
    gates: Gates,
    state: AttemptState,
    trace: TraceContext,
    lease: Lease | None,
    time_limit: float | None,
    carry: Callable[[decisions.Wait, str], NoReturn] | None = None,
    hold: Callable[[AttemptInfo], None] | None = None,
) -> Done | decisions.Wait:
    """Carry out one attempt in its span, with its context bound to every log line.

    Returns a :class:`Done` with the result, or the :class:`~decisions.Wait` to carry out
    (``carry`` does it inside the attempt's context, given the wait and the span ID, and
    raises :class:`Unpublished` when the broker would not take it);
    final failures are raised (``GaveUp``, ``BreakerOpenError``, the body's own permanent
    failure, redacted; Celery's ``Ignore``/``Reject``/``Retry``). ``hold`` receives the
    attempt's context when it ends.
    """
    task_id = safe_token(request.id)
    with attempt_span(
        task.name, trace, {"celery.task_id": task_id, "attempt": state.attempt}
    ) as span:
        info = AttemptInfo.of_checked(
            trace.trace_id,
            span.span_id,
            task_id,
            _name_token(task.name),
            state.attempt,
            sampled=span.sampled,
        )
        flow = Flow(
            task=task,
            request=request,
            options=options,
            gates=gates,
            state=state,
            trace_id=trace.trace_id,
            lease=lease,
            span_id=span.span_id,
            rng=random,
            time_limit=time_limit,
        )
        try:
            with bind_attempt(info):
                outcome = flow.run(args, kwargs)
                if isinstance(outcome, decisions.Wait):
                    span.set("countdown", outcome.countdown)
                    if carry is not None:
                        try:
                            carry(outcome, span.span_id)
                        except Unpublished as exc:
                            flow.unpublished(outcome, exc.why)
        except Retry as exc:  # the body re-queued itself
            span.set("countdown", float(exc.when) if isinstance(exc.when, (int, float)) else 0.0)
            raise
        finally:
            span.set("verdict", flow.verdict)
            if hold is not None:
                hold(info)
        return outcome
