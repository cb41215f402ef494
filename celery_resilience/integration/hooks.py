"""Celery signal handlers: trace context at publish time, log context in the worker.

Connected once, when the first resilient task is declared
(:mod:`~celery_resilience.integration.wiring`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_received,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)

from celery_resilience.core import headers as names
from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.integration.message import new_nonce, trace_for_publish
from celery_resilience.integration.named import config_book
from celery_resilience.integration.runtime import flush_held
from celery_resilience.integration.settings import read_settings
from celery_resilience.integration.task import resilient_task_names, resilient_tasks
from celery_resilience.observability import logs
from celery_resilience.observability.redaction import redact
from celery_resilience.observability.tracing import current_attempt
from celery_resilience.state.connect import connect as connect_store
from celery_resilience.state.connect import describe
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.version import server_version, version_problem

__all__ = ["check_app", "check_store_version", "connect"]

_logger = logging.getLogger("celery_resilience.integration.hooks")
#: Argument reprs with nothing to redact (no arguments): not worth five regex passes.
_EMPTY_REPRS = frozenset({"", "()", "[]", "{}"})
_connected = False


def _on_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Give each new publication its own token (a retry keeps the one it carries: see
    names.NONCE), a resilient task (or any task published inside an attempt) a trace
    context, and a resilient task's argument reprs their credentials hidden. Connected
    once a resilient task is declared in this process; then the token goes on every task
    published here, since the same process may also publish a resilient task by name."""
    if headers is None:
        return
    if not headers.get(names.NONCE):
        headers[names.NONCE] = new_nonce()
    if sender in resilient_task_names:
        # Flower and the worker's "received" events show these: never a credential.
        for name in ("argsrepr", "kwargsrepr"):
            value = headers.get(name)
            if isinstance(value, str) and value not in _EMPTY_REPRS:
                headers[name] = redact(value)
    elif current_attempt() is None:
        return
    if not headers.get(names.TRACE):
        headers[names.TRACE] = trace_for_publish().traceparent()


def _on_received(request: Any = None, **_: Any) -> None:
    """A message published without this package's publish hook (by name, from a process
    that does not declare the task) still shows its argument reprs redacted: in the
    worker's ``task-received`` event (Flower) and in ``inspect active``/``reserved``."""
    if request is None or getattr(request, "name", None) not in resilient_task_names:
        return
    for name in ("_argsrepr", "_kwargsrepr"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value not in _EMPTY_REPRS:
            with contextlib.suppress(AttributeError):
                setattr(request, name, redact(value))


def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    """Bind trace and attempt to every line the worker logs (and redact secrets)."""
    from celery import current_app  # noqa: PLC0415 - the worker's app, once it is set up

    if not current_app.conf.get("resilience_log_context", True):
        return
    logs.install_on_logger(logger if logger is not None else logging.getLogger())


def check_app(app: Any) -> None:
    """Check the settings and named policies of ``app`` (ValueError when they cannot work)."""
    tasks = resilient_tasks(app)
    if not tasks:
        return
    read_settings(app)
    book = config_book(app)
    for task in tasks.values():
        name = task.resilience_options(overrides=False).policy
        if name is not None:
            book.config_of(name)


def check_store_version(app: Any) -> None:
    """Raise :class:`ResilienceConfigError` when the state store of ``app`` runs a Redis
    older than :data:`~celery_resilience.state.version.MIN_REDIS_VERSION`. A store that
    does not answer now is not checked (the tasks fall back; see the fallback setting)."""
    settings = read_settings(app)
    client = None
    try:
        client = connect_store(
            settings.backend_url, timeout=settings.redis_timeout, ssl=settings.ssl
        )
        version = server_version(client)
    except STORE_ERRORS as exc:
        _logger.warning(
            "celery-resilience: the Redis version of the state store was not checked: it "
            "does not answer (%s)",
            type(exc).__name__,
        )
        return
    finally:
        if client is not None:
            client.close()
    problem = version_problem(version, describe(client))
    if problem is not None:
        raise ResilienceConfigError(problem)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """A worker whose resilient tasks cannot work (a bad setting, an unknown policy, a
    state store on a Redis too old) stops at once, with one clear line."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    try:
        check_app(app)
        if resilient_tasks(app):
            check_store_version(app)
    except ValueError as exc:
        raise SystemExit(f"celery-resilience: {exc}") from None


def _on_shutdown(**_: Any) -> None:
    """A process that stops reports the successes it still holds and stores its kept
    dead letters."""
    flush_held()


def connect() -> None:
    """Connect the handlers (idempotent)."""
    global _connected  # noqa: PLW0603 - one-time wiring
    if _connected:
        return
    before_task_publish.connect(_on_publish, weak=False)
    task_received.connect(_on_received, weak=False)
    after_setup_logger.connect(_on_setup_logger, weak=False)
    after_setup_task_logger.connect(_on_setup_logger, weak=False)
    worker_init.connect(_on_worker_init, weak=False)
    worker_process_shutdown.connect(_on_shutdown, weak=False)  # a prefork pool process
    worker_shutdown.connect(_on_shutdown, weak=False)  # a solo or threads pool
    atexit.register(flush_held)  # anything else that ran attempts
    _connected = True
