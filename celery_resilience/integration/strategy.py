"""Reserve a rate-limit slot when a message reaches a worker, and hold it there till then.

Celery's own ``rate_limit`` holds a message in the worker's consumer, without a pool
process, until its token bucket allows it. A resilient task's shared rate limit uses the
same place: when a message of a task with a ``limiter`` arrives, the consumer reserves the
next slot of the shared limiter for it (one round trip) and hands it to the pool when the
slot comes, on the consumer's timer. The attempt is then granted its reserved slot: each
task is delivered once, instead of once to be booked and once more to use the booking.

What bounds it:

* the worker's prefetch: a held message is an unacknowledged one, so a node reserves at
  most as many slots ahead as it may prefetch, and a backlog stays in the broker;
* ``resilience_hold_max`` (seconds, default 5): a slot further away than that is still
  reserved, but the message goes to the pool at once and the attempt waits for the slot
  through the broker (deferred, or parked), as it would without the reservation.
  ``0`` turns reserving on arrival off;
* reserving costs a round trip, so a node reserves only when the limit may be full:
  while this node alone hands messages of that limit over faster than the limit allows
  (the limit's own GCRA, kept locally), and for :data:`_FULL_MEMORY` seconds after a sign
  that it is full (a message that the limiter deferred arrives, or a reservation has to
  wait). Otherwise a message goes straight to the pool, where the attempt's own gate
  grants it in its one round trip (or books a slot and defers it, which is such a sign).

Only messages that arrive due are reserved (a first publication, a released parked
task): one with a countdown or an ETA waits on Celery's own ETA timer and asks its gate
when it comes, as before.

Where the worker's view differs from the reservation's: a policy changed since (another
limiter name, or none) makes the attempt ignore the reservation; a 429 pause since the
reservation voids it (the attempt books again after the pause); a message held when the
worker stops goes back to the broker, and its slot is lost (the limiter is never exceeded).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from celery.worker.strategy import default

from celery_resilience.core import headers as names
from celery_resilience.core.gates import Denial, GateAsk
from celery_resilience.core.keying import key_text
from celery_resilience.core.ledger import AttemptState
from celery_resilience.integration.message import booking_header
from celery_resilience.integration.runtime import runtime_for
from celery_resilience.state.errors import STORE_ERRORS

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery_resilience.core.limits import RateLimit
    from celery_resilience.integration.task import ResilientTask

__all__ = ["resilient"]

logger = logging.getLogger("celery_resilience.integration.strategy")

#: Seconds a sign that a limiter is full makes this node reserve slots on arrival.
_FULL_MEMORY = 5.0
#: Seconds the consumer reserves nothing after the state store failed to answer.
_STORE_DOWN_PAUSE = 5.0


class _Consumer:
    """The worker's consumer, with its hand-over to the pool routed through ``hold``."""

    def __init__(self, consumer: Any, on_task_request: Callable[[Any], None]) -> None:
        self.__dict__["_consumer"] = consumer
        self.__dict__["on_task_request"] = on_task_request

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_consumer"], name)


class _Holder:
    """Reserves slots for one task type's messages and holds them on the timer."""

    def __init__(self, task: ResilientTask, consumer: Any, hold_max: float) -> None:
        self.task = task
        self.consumer = consumer
        self.handle: Callable[[Any], None] = consumer.on_task_request
        self.hold_max = hold_max
        #: limiter name -> monotonic time until which it is taken to be full
        self.full_until: dict[str, float] = {}
        #: limiter name -> this node's own GCRA over unreserved hand-overs
        self.local_tat: dict[str, float] = {}
        #: monotonic time until which the state store is not asked (it failed)
        self.store_down_until = 0.0

    def seen(self, headers: dict[str, Any] | None) -> None:
        """A message arrived: one deferred by a limiter says that limiter is full."""
        raw = (headers or {}).get(names.STATE)
        if raw is None:
            return
        state = AttemptState.from_header(raw)
        if state is not None and state.slot is not None:
            self.full_until[state.slot[0]] = time.monotonic() + _FULL_MEMORY

    def _room(self, limiter: RateLimit, mono: float) -> bool:
        """Whether this node alone hands messages over no faster than the limit allows
        (the limit's own GCRA, over this node's unreserved hand-overs): then there is
        room, as far as this node can tell, and the message goes without a reservation."""
        interval = limiter.interval
        tat = self.local_tat.get(limiter.name, 0.0)
        if mono < tat - (limiter.capacity - 1) * interval:
            return False
        self.local_tat[limiter.name] = max(tat, mono) + interval
        return True

    def hold(self, req: Any) -> None:
        """Reserve the next slot for ``req`` and hand it to the pool when it comes."""
        try:
            delay = self._reserve(req)
        except Exception:  # the attempt's own gate decides, as it would without this
            logger.warning("celery-resilience: no slot reserved on arrival", exc_info=True)
            delay = 0.0
        if delay > 0.0:
            self.consumer.timer.call_after(delay, self.handle, (req,), priority=5)
        else:
            self.handle(req)

    def _reserve(self, req: Any) -> float:
        """Reserve a slot for ``req`` (seconds to hold it; 0: hand it over now)."""
        limiter = self.task.resilience_options().limiter
        if limiter is None:
            return 0.0
        if limiter.key is not None:  # a keyed limit: the slot is the message's key's
            try:
                key = key_text(limiter.key, tuple(req.args or ()), dict(req.kwargs or {}))
            except Exception:  # noqa: BLE001 - the attempt's own gate gives the task up
                return 0.0
            limiter = limiter.bind(key)
        mono = time.monotonic()
        if self.full_until.get(limiter.name, 0.0) <= mono and self._room(limiter, mono):
            return 0.0
        request = req.request_dict
        state = AttemptState.from_header(request.get(names.STATE))
        if (state is not None and state.slot is not None) or names.BOOKED in request:
            return 0.0  # booked already: its attempt asks for that slot
        if self.store_down_until > mono:
            return 0.0
        ask = GateAsk(holder=str(req.id), limiter=limiter, limiter_book=True)
        try:
            # the shared store only: with it down the attempt's own gate falls back (and
            # says so); the consumer neither blocks on it nor books in a local fallback
            answer = runtime_for(self.task.app).shared.gate(ask)
        except STORE_ERRORS:
            self.store_down_until = mono + _STORE_DOWN_PAUSE
            return 0.0
        if answer.denial is not Denial.RATE_LIMITED or answer.slot is None:
            return 0.0
        request[names.BOOKED] = booking_header(limiter.name, answer.slot)
        if answer.wait <= 0.0:
            self.full_until.pop(limiter.name, None)
            return 0.0
        self.full_until[limiter.name] = time.monotonic() + _FULL_MEMORY
        return answer.wait if answer.wait <= self.hold_max else 0.0


def resilient(task: ResilientTask, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """The task strategy of resilient tasks: Celery's default, with slots reserved on
    arrival for tasks that have a rate limit (see the module docstring)."""
    hold_max = runtime_for(app).settings.hold_max if task.limiter or task.policy else 0.0
    if hold_max <= 0.0:
        return default(task, app, consumer, **kwargs)
    holder = _Holder(task, consumer, hold_max)
    handler = default(task, app, _Consumer(consumer, holder.hold), **kwargs)

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, *rest: Any) -> Any:
        holder.seen(getattr(message, "headers", None))
        return handler(message, body, ack, reject, *rest)

    return task_message_handler
