"""Two guards for kombu's Redis transport: one worker stopped by a broker restart, and
the unacknowledged messages of every worker held back by one killed node.

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

The second: a worker gives the messages that other workers received and never
acknowledged back to their queues (``restore_visible``) only while it holds a Redis lock,
``unacked_mutex``, whose expiry is 300 s by default. A node SIGKILLed while it holds the
lock (every node sweeps, again and again, so it happens) leaves it behind, and
no worker restores anything until it expires: countdowns and ETA tasks the dead node held
come back five minutes late, and later than a drain or a deadline allows.
:func:`bound_unacked_mutex` gives the lock at most :data:`UNACKED_MUTEX_CAP` seconds (the
visibility timeout when shorter) unless ``broker_transport_options`` sets
``unacked_mutex_expire``. A lock that expires under a live, slow sweep costs nothing: kombu
restores each message in a transaction that watches the unacked set, so two sweeps never
restore one message twice.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["UNACKED_MUTEX_CAP", "bound_unacked_mutex", "install", "installed"]

#: The longest kombu's ``unacked_mutex`` outlives a node killed while holding it (seconds).
UNACKED_MUTEX_CAP = 30.0

#: kombu's Redis transport's own visibility timeout (seconds).
_KOMBU_VISIBILITY = 3600.0

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


def bound_unacked_mutex(app: Any) -> float | None:
    """Bound ``unacked_mutex_expire`` in ``app``'s ``broker_transport_options`` to
    :data:`UNACKED_MUTEX_CAP` (the visibility timeout when shorter, never below 1 s); the
    value set, or None when the options already name one. Before the worker connects."""
    options = dict(app.conf.broker_transport_options or {})
    if "unacked_mutex_expire" in options:
        return None
    visibility = float(options.get("visibility_timeout", _KOMBU_VISIBILITY))
    expire = max(1.0, min(UNACKED_MUTEX_CAP, visibility))
    options["unacked_mutex_expire"] = expire
    app.conf.broker_transport_options = options
    return expire
