"""Where a parked task lives, and how its message is made and published again.

The rule: a parked task is never kept anywhere less durable than the broker it came from
(its original message is acknowledged once it is parked: the entry is its only copy).

=====================  ==================================================================
broker                 parked set
=====================  ==================================================================
Redis (``redis://``,   the broker's own Redis (a client on the broker URL, with
``rediss://``,         ``broker_use_ssl`` and the ``master_name`` / ``sentinel_kwargs``
``sentinel://``,       transport options), under the state store's key prefix: as
``redis+socket://``)   durable as the queue itself, whatever its persistence
anything else          the state store, if it writes an append-only file
(RabbitMQ, ...)        (:func:`~celery_resilience.state.parked.reports_persistence`);
                       otherwise none: the caller keeps (capped) countdowns
=====================  ==================================================================

The attempt path parks a wait longer than ``resilience_park_after`` so (and keeps a
countdown whenever a step says no)::

    parked = parked_set_for(task.app)                       # None: do not park
    message = message_for(task, request, args, kwargs, headers)  # None: not JSON
    try:
        parked.park(task_name=task.name, task_id=request.id, reason="backoff",
                    delay=wait, message=message)
    except (ParkRefusedError, *STORE_ERRORS):
        ...                                                 # a countdown, as before

and holds an attempt lease for every message that carries :data:`PARKED_HEADER`, so that
a message published twice (a releaser that died between publishing and forgetting) runs
once. That header belongs to one release: a retry does not carry it on (:func:`message_for`
drops it, and so does the worker's re-publication). The worker's releaser calls
:func:`publish`.
See docs/parking.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from kombu.utils import json as kombu_json

from celery_resilience.core import headers as names
from celery_resilience.integration.settings import read_settings
from celery_resilience.state.connect import connect, describe
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.parked import ParkedSet, reports_persistence

if TYPE_CHECKING:
    from celery import Celery, Task
    from celery.app.task import Context

    from celery_resilience.state.connect import Client
    from celery_resilience.state.parked import ParkedEntry

__all__ = [
    "PARKED_HEADER",
    "ParkingPlace",
    "broker_client",
    "message_for",
    "parked_set_for",
    "parking_place",
    "publish",
]

logger = logging.getLogger("celery_resilience.integration.parking")

#: The header a released message carries: the id of the parked entry it came from.
PARKED_HEADER = names.PARKED
#: kombu's Redis transport schemes.
_REDIS_BROKER = ("redis", "rediss", "unix", "redis+socket", "socket", "sentinel")
#: Seconds a "cannot tell" answer (the state store did not answer) is kept before asking again.
_RETRY_UNKNOWN = 10.0
_UNKNOWN_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, ValueError)


@dataclass(frozen=True, slots=True)
class ParkingPlace:
    """The parked set of an app, and whether tasks may be parked there."""

    parked: ParkedSet
    #: where it is, without credentials ("127.0.0.1:6379/0")
    where: str
    #: "broker" (the Redis broker) or "state store"
    store: str
    #: True when tasks may be parked there (see the module's table)
    durable: bool
    #: one line saying why (or why not)
    why: str


def _broker_url(app: Celery) -> str | None:
    value = app.conf.broker_url
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    return value.strip()


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def broker_client(app: Celery, *, timeout: float) -> Client | None:
    """A Redis client on the app's broker when it is Redis (else None), with the broker's
    TLS options and Sentinel settings; ``timeout``: socket timeouts, seconds."""
    url = _broker_url(app)
    if url is None:
        return None
    scheme = _scheme(url.split(";", 1)[0])
    if scheme not in _REDIS_BROKER:
        return None
    ssl = app.conf.get("broker_use_ssl")
    ssl_options = dict(ssl) if isinstance(ssl, dict) else None
    options = app.conf.broker_transport_options or {}
    if scheme == "sentinel":
        url = _sentinel_url(url, options, tls=bool(ssl))
    elif scheme in ("redis+socket", "socket"):
        url = _socket_url(url)
    else:
        url = url.split(";", 1)[0]
    return connect(url, timeout=timeout, ssl=ssl_options)


def _socket_url(url: str) -> str:
    """kombu's ``redis+socket:///path?virtual_host=1`` as ``unix:///path?db=1``."""
    parts = urlsplit(url.split(";", 1)[0])
    query = parse_qs(parts.query)
    db = query.get("virtual_host", query.get("db", ["0"]))[0] or "0"
    auth = parts.netloc.rpartition("@")[0]
    return f"unix://{auth + '@' if auth else ''}{parts.path}?db={quote(db)}"


def _sentinel_url(url: str, options: dict[str, Any], *, tls: bool) -> str:
    """kombu's ``sentinel://:pw@h1:26379/0;sentinel://h2:26379`` with the transport option
    ``master_name`` as the state store's ``redis+sentinel://:pw@h1:26379,h2:26379/name/0``."""
    master = options.get("master_name")
    if not master:
        raise ValueError("a sentinel:// broker needs the transport option master_name")
    items = [urlsplit(item.strip()) for item in url.split(";") if item.strip()]
    first = items[0]
    auth = first.netloc.rpartition("@")[0]
    hosts = ",".join(item.netloc.rpartition("@")[2] for item in items)
    db = first.path.strip("/") or "0"
    query = ""
    sentinel_kwargs = options.get("sentinel_kwargs") or {}
    if sentinel_kwargs.get("password"):
        query = "?sentinel_password=" + quote(str(sentinel_kwargs["password"]), safe="")
    scheme = "rediss+sentinel" if tls else "redis+sentinel"
    name = quote(unquote(str(master)), safe="")
    return f"{scheme}://{auth + '@' if auth else ''}{hosts}/{name}/{db}{query}"


def parking_place(app: Celery, *, timeout: float | None = None) -> ParkingPlace:
    """The app's parked set and whether it is durable enough (see the module's table).

    Asks the state store ``INFO persistence`` when the broker is not Redis (store errors
    propagate); builds clients only otherwise (nothing connects until used).
    """
    settings = read_settings(app)
    timeout = settings.redis_timeout if timeout is None else timeout
    client = broker_client(app, timeout=timeout)
    if client is not None:
        return ParkingPlace(
            parked=ParkedSet(client, settings.keys),
            where=describe(client),
            store="broker",
            durable=True,
            why="the Redis broker itself (as durable as its queues)",
        )
    client = connect(settings.backend_url, timeout=timeout, ssl=settings.ssl)
    where = describe(client)
    try:
        durable = reports_persistence(client)
    except BaseException:
        client.close()
        raise
    why = (
        "the state store, which writes an append-only file"
        if durable
        else "nowhere: the broker is not Redis and the state store writes no append-only "
        "file (appendonly no), so waits stay countdowns"
    )
    return ParkingPlace(ParkedSet(client, settings.keys), where, "state store", durable, why)


_places: dict[int, tuple[int, float, ParkedSet | None]] = {}
_places_lock = threading.Lock()


def parked_set_for(app: Celery) -> ParkedSet | None:
    """The parked set where this process parks tasks of ``app``, or None (parking off by
    ``resilience_park_after = 0``, or no place durable enough): cached per process.

    When the state store does not answer the persistence question, None is kept for ten
    seconds, then it is asked again.
    """
    pid = os.getpid()
    found = _places.get(id(app))
    if found is not None and found[0] == pid and time.monotonic() < found[1]:
        return found[2]
    with _places_lock:
        found = _places.get(id(app))
        if found is not None and found[0] == pid and time.monotonic() < found[1]:
            return found[2]
        parked: ParkedSet | None = None
        until = float("inf")
        if read_settings(app).park_after > 0:
            try:
                place = parking_place(app)
            except _UNKNOWN_ERRORS as exc:
                logger.warning(
                    "celery-resilience: cannot tell where to park tasks (%s: %s); waits stay "
                    "countdowns for %g s",
                    type(exc).__name__,
                    exc,
                    _RETRY_UNKNOWN,
                )
                until = time.monotonic() + _RETRY_UNKNOWN
            else:
                if place.durable:
                    parked = place.parked
                else:
                    logger.info("celery-resilience: tasks are parked %s", place.why)
        _places[id(app)] = (pid, until, parked)
        return parked


def message_for(
    task: Task[Any, Any],
    request: Context,
    args: tuple[Any, ...] | None,
    kwargs: dict[str, Any] | None,
    headers: dict[str, Any],
    **options: Any,
) -> str | None:
    """The message that ``Task.retry`` would publish for ``request`` (same task ID, root,
    parent, links, time limits, exchange and routing key, priority, ``headers``), without
    a countdown, as kombu's JSON text; ``options`` go to ``signature_from_request`` (e.g.
    ``retries``). None when the arguments (or options) do not serialise to JSON.

    A :data:`PARKED_HEADER` in ``headers`` (left by an earlier release) is dropped.
    """
    headers = {k: v for k, v in headers.items() if k != PARKED_HEADER}
    signature = task.signature_from_request(
        request, args, kwargs, countdown=None, eta=None, headers=headers, **options
    )
    try:
        return str(kombu_json.dumps(dict(signature)))
    except (TypeError, ValueError, OverflowError):
        return None


def publish(app: Celery, entry: ParkedEntry, *, producer: Any = None) -> None:
    """Publish a parked entry's message again (through ``producer``, or one of the app's
    producer pool), with the header ``resilience_parked`` set to the entry's id."""
    data: dict[str, Any] = kombu_json.loads(entry.message)
    options = dict(data.get("options") or {})
    headers = dict(options.get("headers") or {})
    headers[PARKED_HEADER] = entry.id
    options["headers"] = headers
    options.pop("countdown", None)
    options.pop("eta", None)
    data["options"] = options
    signature = app.signature(data)
    if producer is not None:
        signature.apply_async(producer=producer)
    else:
        signature.apply_async()
