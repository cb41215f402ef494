"""A pool process lost mid-attempt: its worker gives the attempt's lease back at once.

With ``acks_late`` and ``task_reject_on_worker_lost``, a message whose pool process died
(SIGKILL, the OOM killer, a crash) goes back to the queue at once. Its copy would find
the attempt lease the dead process still holds and wait for it to run out. So every
attempt lease names the process holding it (:func:`owner_of`), and the worker's main
process, which learns of the loss (billiard's ``WorkerLostError``) before it requeues the
message, drops the lease if, and only if, that dead process still holds it, and then
gives back the breaker probe and concurrency slot the attempt held (no other copy of it
can hold them while its lease is held). A lease held by any other process (a copy
running elsewhere) is never touched; a node lost whole (its main process too) changes
nothing: its leases run out, as before.

It works through :class:`LostWorkerRequest`, the request class of
:class:`~celery_resilience.integration.task.ResilientTask`: a task that sets its own
``Request`` should derive it from this one.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.app.task import Context
from celery.worker.request import Request

from celery_resilience.core.gates import OutcomeReport
from celery_resilience.core.keying import KeyFunctionError
from celery_resilience.core.options import bind_keys
from celery_resilience.integration.flow import holder_of
from celery_resilience.integration.message import incoming_state, nonce_of
from celery_resilience.integration.runtime import Runtime, runtime_for
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.errors import STORE_ERRORS

__all__ = ["LostWorkerRequest", "owner_of"]

logger = logging.getLogger("celery_resilience.integration.lost")

#: Names this worker's processes: drawn in its main process when the tasks are declared,
#: and inherited by the pool processes it forks (one that is spawned instead draws its
#: own, and its leases then run out, as without this module).
_NODE = secrets.token_hex(8)


def owner_of(pid: int) -> str:
    """How an attempt lease names the pool process ``pid`` of this worker."""
    return f"{_NODE}/{pid}"


def _lost(exc_info: Any) -> bool:
    exc = getattr(exc_info, "exception", None)
    exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback wraps it
    return isinstance(exc, WorkerLostError)


def give_back(request: Request) -> bool:
    """Drop the attempt lease the lost pool process of ``request`` still holds; True when
    it did (False: no lease, another holder, or the store unreachable)."""
    if not request.worker_pid:
        return False
    pid = int(request.worker_pid)
    context = Context(request.request_dict)
    state = incoming_state(dict(context.headers or {}))
    rt = runtime_for(request.task.app)
    key = rt.settings.keys.attempt(request.id or "?", state.attempt, nonce_of(context))
    try:
        dropped = rt.shared.drop_lost_lease(key, owner_of(pid))
        if dropped:
            _give_back_grants(rt, request, holder_of(request.id or "?", state.attempt))
    except STORE_ERRORS as exc:
        logger.warning(
            "celery-resilience: the lease of a lost attempt stays until it runs out (%s)",
            type(exc).__name__,
        )
        return False
    if dropped:
        logger.info(
            "celery-resilience: task %s, attempt %d: its pool process %d was lost; "
            "its lease and grants are given back",
            safe_token(request.id),
            state.attempt,
            pid,
        )
    return dropped


def _give_back_grants(rt: Runtime, request: Request, holder: str) -> None:
    """Give back the half-open probe and the concurrency slot ``holder`` may hold (a keyed
    breaker's or limit's: the key is found again from the task's arguments)."""
    options_of = getattr(request.task, "resilience_options", None)
    if not callable(options_of):
        return
    try:  # keyed limits: the grants are the key's, as the attempt's gate bound them
        options = bind_keys(options_of(), tuple(request.args or ()), dict(request.kwargs or {}))
    except KeyFunctionError:
        return  # the attempt gave up before its gate: it holds nothing
    report = OutcomeReport(
        holder=holder, breaker=options.breaker, probe=True, concurrency=options.concurrency
    )
    if not report.empty:
        rt.shared.record(report)


class LostWorkerRequest(Request):
    """Celery's request, which gives back the attempt lease of a lost pool process before
    Celery requeues (or fails) its message."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        """Celery's ``on_failure``, after :func:`give_back` when the process was lost."""
        if _lost(exc_info):
            give_back(self)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )
