"""A guard for kombu's Redis transport, which can kill a worker when the broker restarts.

What happens (kombu 5.x, Redis transport): the broker goes away while a channel waits in
``BRPOP``. Celery's consumer then collects the connection: the channel's ``close()``
fails on its pending read (a connection error, swallowed) before it is marked closed, and
the transport is detached from its ``Connection`` (``transport.client = None``). Celery
then closes the connection again; the channel, still open, now restores its unacked
messages, which builds a new Redis client from ``transport.client.hostname``:
``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is neither a
connection nor a channel error, so it escapes Celery's ``ignore_errors`` and the worker
stops with "Unrecoverable error".

The guard makes that late client creation fail as what it is, a connection error: the
close goes on, the unacked messages stay in Redis, and kombu restores them once they are
older than the visibility timeout, as after any lost connection. Installed in workers
whose broker is Redis (:func:`install`, idempotent); nothing else changes.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["install", "installed"]

_MARK = "_celery_resilience_guard"


def installed() -> bool:
    """Whether the guard is in place in this process."""
    try:
        from kombu.transport.redis import Channel  # noqa: PLC0415 - only with a Redis broker
    except ImportError:
        return False
    return bool(getattr(getattr(Channel, "_connparams", None), _MARK, False))


def install() -> bool:
    """Put the guard in place (once per process). False when kombu's Redis transport (or
    redis-py) is not importable, or its channel has no ``_connparams`` to guard."""
    try:
        import redis  # noqa: PLC0415
        from kombu.transport.redis import Channel  # noqa: PLC0415
    except ImportError:
        return False
    original = getattr(Channel, "_connparams", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        transport = getattr(self, "connection", None)
        if transport is None or getattr(transport, "client", None) is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection is closed (its transport was detached); the unacked "
                "messages stay in Redis and are restored after the visibility timeout"
            )
        return original(self, *args, **kwargs)

    setattr(_connparams, _MARK, True)
    Channel._connparams = _connparams  # type: ignore[attr-defined]
    return True
