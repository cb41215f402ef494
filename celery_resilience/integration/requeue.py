"""Publishing a dead letter's task again: where it went before, and only once confirmed.

A requeue sends the task to the exchange and routing key its failed message came by (so a
topic or custom route reaches the queue its consumers read), refuses a task name the app
does not register, and returns only after the broker took the message: with publisher
confirms and the ``mandatory`` flag on RabbitMQ (an unroutable message or a missing
exchange is an error, not a silent drop); on Redis once the push returned, a message no
queue is bound for being refused before anything is pushed. The caller deletes the
letter only then.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu import Exchange
from kombu.transport.virtual.base import UndeliverableWarning

from celery_resilience.core import headers as names
from celery_resilience.observability.tracing import TraceContext, new_span_id, new_trace

if TYPE_CHECKING:
    from celery import Celery

    from celery_resilience.state.deadletters import DeadLetter

__all__ = [
    "CONFIRM_TIMEOUT",
    "Destination",
    "RequeueRefusedError",
    "destination",
    "known_task",
    "requeue_letter",
    "requeue_problem",
]

#: Seconds a requeue waits for the broker's confirmation.
CONFIRM_TIMEOUT = 10.0


class RequeueRefusedError(ValueError):
    """A dead letter cannot be sent again as it is (its arguments are not JSON, its task
    is not registered, or the broker has no route for it)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a requeued task goes: an exchange and routing key, or a queue by name, or
    (all None) wherever the app routes the task."""

    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None

    def describe(self) -> str:
        """``exchange 'x' routing key 'y'``, ``queue 'q'`` or ``the app's route``."""
        if self.queue is not None:
            return f"queue {self.queue!r}"
        if self.exchange is not None:
            exchange = repr(self.exchange) if self.exchange else "'' (default)"
            return f"exchange {exchange} routing key {self.routing_key!r}"
        return "the app's route for the task"

    def options(self, app: Celery) -> dict[str, Any]:
        """``send_task`` options for this destination.

        An exchange that one of the app's queues names is declared as the app declares it
        (kombu's Redis transport routes by the exchange type its publisher declared);
        any other is published to as it is. No queue is declared: the route must exist
        already, and a missing one is an error.
        """
        if self.queue is not None:
            return {"queue": self.queue}
        if self.exchange is None:
            return {}
        if not self.exchange:  # the default exchange routes by queue name
            return {"queue": self.routing_key}
        known = _app_exchange(app, self.exchange)
        if known is not None:
            return {"exchange": known, "routing_key": self.routing_key, "declare": [known]}
        return {"exchange": self.exchange, "routing_key": self.routing_key, "declare": []}


def _app_exchange(app: Celery, name: str) -> Exchange | None:
    for queue in app.amqp.queues.values():
        exchange = getattr(queue, "exchange", None)
        if isinstance(exchange, Exchange) and exchange.name == name:
            return exchange
    return None


def destination(letter: DeadLetter, *, queue: str | None = None) -> Destination:
    """``queue`` when given; else the exchange and routing key the letter kept; else (a
    letter written before they were kept) the app's route for the task."""
    if queue:
        return Destination(queue=queue)
    if letter.exchange is not None and letter.routing_key:
        return Destination(exchange=letter.exchange, routing_key=letter.routing_key)
    return Destination()


def known_task(app: Celery, name: str) -> bool:
    """Whether ``app`` registers a task called ``name`` (its modules imported first)."""
    app.loader.import_default_modules()
    return name in app.tasks


def requeue_problem(app: Celery, letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be requeued as it is, or None when it can."""
    if letter.args_json is None or letter.kwargs_json is None:
        which = "args" if letter.args_json is None else "kwargs"
        return (
            f"its {which} were not kept as JSON (not JSON-serialisable, or over 64 KiB), so "
            "they cannot be sent again as they were (the letter keeps only a capped repr)"
        )
    try:
        args, kwargs = json.loads(letter.args_json), json.loads(letter.kwargs_json)
    except ValueError:
        return "its JSON arguments are malformed"
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "its args are not a JSON list or its kwargs not an object"
    if not known_task(app, letter.task_name):
        return (
            "no task of this app is called so (check -A and the app's imports; a worker "
            "would reject it as unregistered)"
        )
    return None


def requeue_letter(
    app: Celery,
    letter: DeadLetter,
    *,
    queue: str | None = None,
    confirm_timeout: float = CONFIRM_TIMEOUT,
) -> str:
    """Publish the letter's task again with a new task ID, in the letter's trace.

    The arguments come from the letter's JSON copy (never from its ``repr``); the new
    message carries a ``traceparent`` with the letter's trace ID and a new parent span,
    and goes to :func:`destination`. Returns the new task ID once the broker confirmed
    the message. Raises :class:`RequeueRefusedError` when the letter cannot be sent (see
    :func:`requeue_problem`) or the broker has no route for it, and kombu's
    ``OperationalError`` when the broker is unreachable; nothing was published then.
    """
    problem = requeue_problem(app, letter)
    if problem is not None:
        raise RequeueRefusedError(problem)
    args = json.loads(letter.args_json or "[]")
    kwargs = json.loads(letter.kwargs_json or "{}")
    try:
        trace = TraceContext(letter.trace_id, new_span_id())
    except ValueError:
        trace = new_trace()
    task_id = str(uuid.uuid4())
    where = destination(letter, queue=queue)
    options: dict[str, Any] = {
        "task_id": task_id,
        "headers": {names.TRACE: trace.traceparent()},
        "retry": False,  # a failed publish is reported; the letter stays for another try
        **where.options(app),
    }
    amqp = _is_amqp(app)
    transport_options = {"confirm_publish": True} if amqp else {}
    if amqp:
        options.update(mandatory=True, confirm_timeout=confirm_timeout)
    with app.connection_for_write(transport_options=transport_options) as connection:
        connection.ensure_connection(max_retries=1)
        if not amqp and not _routable(connection.default_channel, options):
            # kombu's Redis transport drops (or parks in a queue of its own) a message no
            # queue is bound for: refuse it before anything is pushed.
            raise RequeueRefusedError(f"the broker has no queue bound for {where.describe()}")
        producer = app.amqp.Producer(connection)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UndeliverableWarning)
                app.send_task(
                    letter.task_name, args=args, kwargs=kwargs, producer=producer, **options
                )
        except UndeliverableWarning:
            raise RequeueRefusedError(
                f"the broker has no queue bound for {where.describe()}"
            ) from None
        except Exception as exc:
            if _no_route(exc):
                raise RequeueRefusedError(
                    f"the broker has no route for {where.describe()} ({exc})"
                ) from None
            raise
    return task_id


def _routable(channel: Any, options: dict[str, Any]) -> bool:
    """On kombu's virtual transports (Redis, ...): whether a queue is bound for the
    exchange and routing key in ``options`` (True when there is nothing to check)."""
    exchange, routing_key = options.get("exchange"), options.get("routing_key")
    if exchange is None or not hasattr(channel, "get_table") or not hasattr(channel, "typeof"):
        return True
    if isinstance(exchange, Exchange):
        exchange(channel).declare()  # in memory only: the type the lookup goes by
        exchange = exchange.name
    try:
        found = channel.typeof(exchange).lookup(
            channel.get_table(exchange), exchange, routing_key, None
        )
    except KeyError:
        return False
    return bool([q for q in found if q is not None])


def _is_amqp(app: Celery) -> bool:
    with app.connection_for_write() as connection:  # not connected: its transport's kind
        return bool(connection.transport.driver_type == "amqp")


def _no_route(exc: BaseException) -> bool:
    """A broker's "no such exchange" (404) or "no route" (312 on a mandatory publish)."""
    return getattr(exc, "reply_code", None) in (312, 404)
