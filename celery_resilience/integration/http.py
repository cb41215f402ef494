"""The outbound HTTP session of a task: timeouts, trace and idempotency headers.

Inside an attempt (see :func:`celery_resilience.observability.tracing.bind_attempt`) every request
of a :class:`ResilientSession` carries the attempt's ``traceparent``, and every POST or
PATCH an ``Idempotency-Key`` that is the same on each retry of the task::

    session = session_for_process()
    resp = session.post("https://payments.example/charges", json=body)

In an attempt of a task with a ``deadline``, each call's timeouts (connect and read) are
at most what is left of the deadline, a call with less than
:data:`~celery_resilience.core.budget.MIN_CALL_BUDGET` left is not started
(:class:`~celery_resilience.core.errors.DeadlineSpent`: the task gives up as by its
deadline), and the header named by ``resilience_deadline_header``, when set, says how
many seconds are left.

Outside an attempt the session adds no header; it is still a plain ``requests.Session``
with a default timeout. It never logs headers.
"""

from __future__ import annotations

import http.cookiejar
import os
import threading
import uuid
from collections.abc import MutableMapping
from typing import Any, Final, TypeAlias

import requests
from requests.models import PreparedRequest, Response

from celery_resilience.core.budget import (
    MIN_CALL_BUDGET,
    budget_header_value,
    shrink_timeout,
)
from celery_resilience.core.errors import DeadlineSpent
from celery_resilience.integration.budget import current_budget
from celery_resilience.observability.tracing import (
    TRACEPARENT_HEADER,
    current_attempt,
    next_unsafe_call_index,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENCY_NAMESPACE",
    "ResilientSession",
    "Timeout",
    "idempotency_key",
    "prepare_call",
    "session_for_process",
]

Timeout: TypeAlias = float | tuple[float | None, float | None]
"""A ``requests`` timeout: seconds, or ``(connect, read)`` seconds."""

DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 30.0)
"""(connect, read) seconds, used when neither the call nor the session gives one."""

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
"""The header that lets an upstream recognise a retried POST or PATCH."""

IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("5e0b7c36-8a1f-5d0e-9a57-7d2f1c3b6a41")
"""The uuid5 namespace of idempotency keys (fixed: changing it changes every key)."""

_UNSAFE_METHODS: Final = frozenset({"POST", "PATCH"})


def idempotency_key(task_id: str, index: int) -> str:
    """The idempotency key of the ``index``-th POST/PATCH of any attempt of a task.

    A uuid5 of the task ID and the call's position, so the same call gets the same key
    on every retry::

        >>> idempotency_key("7c1e4b2a-0000-4000-8000-000000000001", 1)
        'b846ff18-bec4-556f-b8ef-c64e0eab19a4'
    """
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{task_id}/{index}"))


def prepare_call(method: str, headers: MutableMapping[str, str]) -> float | None:
    """Make a request about to be sent fit the running attempt; any HTTP client's hook.

    Adds to ``headers`` (a case-insensitive mapping) what the attempt says: the budget
    header, ``traceparent``, and on POST/PATCH the ``Idempotency-Key``, each unless the
    request has it. Returns the seconds left of the task's deadline, to which the caller
    cuts the call's timeouts (``None``: no deadline). Raises
    :class:`~celery_resilience.core.errors.DeadlineSpent` when less than
    :data:`~celery_resilience.core.budget.MIN_CALL_BUDGET` is left: send nothing then.
    """
    budget = current_budget()
    left: float | None = None
    if budget is not None:
        left = budget.left()
        if left < MIN_CALL_BUDGET:
            raise DeadlineSpent(
                f"{left:.3f} s left of the task's deadline of {budget.deadline:g} s: "
                "call not started"
            )
        if budget.header is not None and budget.header not in headers:
            headers[budget.header] = budget_header_value(left)
    info = current_attempt()
    if info is not None:
        if TRACEPARENT_HEADER not in headers:
            headers[TRACEPARENT_HEADER] = info.traceparent()
        if method.upper() in _UNSAFE_METHODS and IDEMPOTENCY_HEADER not in headers:
            index = next_unsafe_call_index()
            headers[IDEMPOTENCY_HEADER] = idempotency_key(info.task_id, index)
    return left


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Store no cookie from any response (cookies passed with a call are still sent)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        """Refuse every cookie a response sets."""
        return False


class ResilientSession(requests.Session):
    """A ``requests.Session`` for task code: timeouts and attempt headers by default.

    - A request sent without a timeout (or with ``timeout=None``) gets the session's
      ``timeout``, by default :data:`DEFAULT_TIMEOUT`: a task never waits forever on an
      upstream. Pass a large timeout to wait longer.
    - Inside an attempt, ``traceparent`` (the attempt's trace and span) is added unless
      the request has one.
    - Inside an attempt, a POST or PATCH without an ``Idempotency-Key`` (in any case)
      gets one from :func:`idempotency_key`. Only the calls keyed here take a position,
      so a call with the caller's own key, or a redirect that carries the key of the
      call it follows, leaves the positions of later calls unchanged.
    - Inside an attempt of a task with a ``deadline``, the timeout (each of connect and
      read) is cut to what is left of the deadline, the budget header (if configured) is
      added unless the request has it, and a call with too little time left raises
      :class:`~celery_resilience.core.errors.DeadlineSpent` without being sent.

    Headers are added when the request is sent, so ``session.send(prepared)`` gets them
    as well as ``session.post(...)``.

    One session serves every task of a process (and every thread of a thread pool), so it
    keeps no cookies: a cookie set by one task's upstream must never reach another task's
    request. Pass what a call needs with the call (``headers=``, ``cookies=``, ``auth=``)
    rather than setting it on the session.
    """

    def __init__(self, *, timeout: Timeout | None = None) -> None:
        super().__init__()
        self.timeout: Timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.cookies.set_policy(_NoCookies())

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:
        """Send ``request`` with the default timeout and the attempt's headers added."""
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        left = prepare_call(request.method or "", request.headers)
        if left is not None:
            kwargs["timeout"] = shrink_timeout(kwargs["timeout"], left)
        return super().send(request, **kwargs)


_lock = threading.Lock()
_pid: int | None = None
_sessions: dict[Timeout | None, ResilientSession] = {}


def _forget_parent_sessions() -> None:
    # In a forked child: a fresh lock (the parent's may have been held at the fork),
    # and none of the parent's sessions. They are dropped, not closed: closing takes
    # their pools' locks, which may be held too.
    global _lock, _pid  # noqa: PLW0603 - reset after fork, like the logging module
    _lock = threading.Lock()
    _pid = None
    _sessions.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_sessions)


def session_for_process(timeout: Timeout | None = None) -> ResilientSession:
    """The process's shared :class:`ResilientSession` for ``timeout``.

    One session per process and timeout, so connections are pooled across tasks. The
    cache is keyed by ``os.getpid()``: a prefork child gets its own session on first use
    and never sends on sockets inherited from its parent.
    """
    global _pid  # noqa: PLW0603 - one cache per process, by design
    pid = os.getpid()
    with _lock:
        if pid != _pid:
            _sessions.clear()  # a fork that bypassed os.fork: as _forget_parent_sessions
            _pid = pid
        session = _sessions.get(timeout)
        if session is None:
            session = _sessions[timeout] = ResilientSession(timeout=timeout)
        return session
