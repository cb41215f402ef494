"""Connect the Celery signal handlers, once, when the first resilient task is declared.

Importing the package connects nothing: a process that declares no resilient task is not
touched. Declaring one (``@resilient_task``, a :class:`ResilientTask` subclass, or
``app.task(base=ResilientTask)``) happens when the app's modules are imported, before a
worker sends ``worker_init``, so the worker's handlers are in place in time.
"""

from __future__ import annotations

__all__ = ["wire"]

_wired = False


def wire() -> None:
    """Connect the publish, logging and worker handlers (idempotent)."""
    global _wired  # noqa: PLW0603 - one-time wiring
    if _wired:
        return
    from celery_resilience.integration import bootstep, hooks  # noqa: PLC0415 - import cycle

    hooks.connect()
    bootstep.connect()
    _wired = True
