"""The releaser: one thread per worker that publishes parked tasks when they are due.

About every ``resilience_park_poll`` seconds (with +/- 50 % jitter, so that a fleet of
workers does not ask at the same instant) it claims up to 100 due entries for
``resilience_park_lease`` seconds, publishes each through the app's producer pool, and
forgets it; an entry parked because its breaker was open, whose breaker would still
refuse it, waits again instead (:func:`hold_back`: a task waiting out an outage is
delivered when it can run, not each time it wakes). It goes again at once while it finds
full batches. A publish that fails
leaves the claim to run out (then this or another releaser publishes it); an unreachable
store is logged once and asked again with backoff. Nothing it meets stops the worker.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from celery_resilience import signals
from celery_resilience.core import clock
from celery_resilience.core.gates import BreakerState
from celery_resilience.core.keying import shown
from celery_resilience.integration.inspection import declared
from celery_resilience.integration.parking import parking_place, publish
from celery_resilience.integration.runtime import runtime_for
from celery_resilience.integration.settings import read_settings
from celery_resilience.observability.breakers import describe_transition
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.errors import STORE_ERRORS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from celery import Celery

    from celery_resilience.core.gates import BreakerStatus
    from celery_resilience.core.limits import CircuitBreaker
    from celery_resilience.state.parked import ParkedEntry, ParkedSet

__all__ = ["BATCH", "Releaser", "ReleaserStats", "hold_back", "next_delay"]

logger = logging.getLogger("celery_resilience.integration.releaser")

#: Entries claimed per look.
BATCH = 100
#: The longest pause after failures, seconds.
_MAX_BACKOFF = 30.0
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, OSError)


def next_delay(poll: float, *, full: bool, failures: int, draw: float) -> float:
    """Seconds before the next look: none after a full batch (more are due), ``poll``
    scaled by 0.5 + ``draw`` (``draw`` uniform in [0, 1)) otherwise, doubled per
    consecutive failure up to 30 s.

    >>> next_delay(1.0, full=True, failures=0, draw=0.5)
    0.0
    >>> next_delay(1.0, full=False, failures=2, draw=0.5)
    4.0
    """
    if full and failures == 0:
        return 0.0
    base: float = min(poll * 2.0 ** min(failures, 16), max(_MAX_BACKOFF, poll))
    return base * (0.5 + draw)


def hold_back(
    entries: list[ParkedEntry],
    statuses: Mapping[str, BreakerStatus],
    policies: Mapping[str, CircuitBreaker],
    rng: random.Random,
    *,
    poll: float,
) -> dict[str, float]:
    """Which due entries wait again (id -> seconds), by their breaker's state: open,
    until it may half-open (plus the breaker's own spread, as a deferral has); forced
    open, another ``open_for`` or two; half-open, all but as many as it has free probe
    slots (those go now, to probe), for about one more look. The others go now."""
    held: dict[str, float] = {}
    free: dict[str, int] = {}
    for entry in entries:
        status = statuses.get(entry.breaker or "")
        policy = policies.get(entry.breaker or "")
        if status is None or policy is None:
            continue
        if status.state is BreakerState.OPEN:
            wait = max(status.open_until - status.now, 0.0)
            held[entry.id] = wait + rng.uniform(0.0, policy.open_for)
        elif status.state is BreakerState.FORCED_OPEN:
            held[entry.id] = policy.open_for * rng.uniform(1.0, 2.0)
        elif status.state is BreakerState.HALF_OPEN:
            left = free.setdefault(policy.name, max(policy.half_open_calls - status.probes, 0))
            if left > 0:
                free[policy.name] = left - 1
            else:
                held[entry.id] = poll * rng.uniform(0.5, 1.5)
    return held


@dataclass
class ReleaserStats:
    """What the releaser of this worker did (for ``inspect stats``)."""

    published: int = 0
    #: entries published again after another claim ran out (their releaser died or failed)
    republished: int = 0
    publish_errors: int = 0
    #: due entries not published because their breaker would still refuse them
    held_back: int = 0
    store_errors: int = 0
    last_look_at: float | None = None
    last_error: str | None = None


class Releaser:
    """Publishes the due entries of ``app``'s parked set from a daemon thread."""

    def __init__(
        self,
        app: Celery,
        *,
        poll: float | None = None,
        lease: float | None = None,
        batch: int = BATCH,
        place: Callable[[], ParkedSet] | None = None,
    ) -> None:
        settings = read_settings(app)
        self.app = app
        self.poll = settings.park_poll if poll is None else poll
        self.lease = settings.park_lease if lease is None else lease
        self.batch = batch
        self.stats = ReleaserStats()
        self._place = place or (lambda: parking_place(app).parked)
        self._parked: ParkedSet | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._store_down = False
        self._random = random.Random()  # noqa: S311 - jitter, not secrets
        self._breakers: dict[str, CircuitBreaker] | None = None

    @property
    def running(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="resilience-releaser", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait for it (bounded): a batch under way is finished
        or left to its lease."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        delay = self.poll * self._random.random()  # workers that start together spread out
        while not self._stop.wait(delay):
            full = False
            try:
                full = self.run_once() >= self.batch
            except Exception:  # a bug here must not take the worker down
                self._failures += 1
                logger.exception("celery-resilience: the releaser failed; it goes on")
            delay = next_delay(
                self.poll, full=full, failures=self._failures, draw=self._random.random()
            )

    def run_once(self) -> int:
        """One look: claim the due entries, publish them, forget them. Returns how many
        were claimed (store errors are counted and logged, not raised)."""
        self.stats.last_look_at = clock.now()
        try:
            if self._parked is None:
                self._parked = self._place()
            entries = self._parked.claim_due(limit=self.batch, lease=self.lease)
        except STORE_ERRORS as exc:
            self._store_error(exc)
            return 0
        if self._store_down:
            self._store_down = False
            logger.info("celery-resilience: the parked set answers again")
        self._failures = 0
        self.stats.last_error = None
        if entries:
            self._publish_all(entries)
        return len(entries)

    def _held_back(self, entries: list[ParkedEntry]) -> dict[str, float]:
        """The entries whose breaker would still refuse them, and how long each waits
        again: they are not published, so that a task waiting out an outage is delivered
        once it can run, not each time it wakes to find the breaker still open."""
        names = {e.breaker for e in entries if e.breaker is not None}
        if not names:
            return {}
        if self._breakers is None:
            self._breakers = declared(self.app).breakers
        store = runtime_for(self.app).store
        statuses: dict[str, BreakerStatus] = {}
        for name in names:
            policy = self._breakers.get(name)
            if policy is not None and policy.key is None:  # a keyed one: its gate decides
                try:
                    status = store.breaker(policy, "status")
                except STORE_ERRORS:
                    continue  # unknown: the entry goes, and its gate decides
                statuses[name] = status
                # reading may move an OPEN breaker whose time is up to HALF_OPEN: say so
                for tr in status.transitions:
                    logger.warning(
                        "breaker %s: %s", shown(repr(tr.name), tr.key), describe_transition(tr)
                    )
                signals.send_transitions(status.transitions)
        return hold_back(entries, statuses, self._breakers, self._random, poll=self.poll)

    def _publish_all(self, entries: list[Any]) -> None:
        parked = self._parked
        if parked is None:
            return
        try:
            held = self._held_back(entries)
        except Exception:  # holding back is an economy: never a reason not to publish
            logger.exception("celery-resilience: parked tasks published without holding back")
            held = {}
        if held:
            try:
                parked.postpone(held)
            except STORE_ERRORS as exc:
                self._store_error(exc)
                return
            self.stats.held_back += len(held)
            entries = [e for e in entries if e.id not in held]
        with self.app.producer_or_acquire() as producer:
            for entry in entries:
                if self._stop.is_set():
                    return  # shutting down: the claims run out and another releaser goes on
                try:
                    publish(self.app, entry, producer=producer)
                except _PUBLISH_ERRORS as exc:
                    self.stats.publish_errors += 1
                    self._failures += 1
                    self.stats.last_error = f"publish: {type(exc).__name__}: {exc}"[:200]
                    logger.warning(
                        "celery-resilience: could not publish parked %s[%s] (%s); its claim "
                        "runs out in %g s and it is published then",
                        safe_token(entry.task_name),
                        safe_token(entry.task_id),
                        type(exc).__name__,
                        self.lease,
                    )
                    return
                except Exception:
                    self.stats.publish_errors += 1
                    logger.exception(
                        "celery-resilience: parked entry %s of %s[%s] cannot be published "
                        "(claimed %d times); it stays parked",
                        safe_token(entry.id),
                        safe_token(entry.task_name),
                        safe_token(entry.task_id),
                        entry.claims,
                    )
                    continue
                self.stats.published += 1
                if entry.claims > 1:
                    self.stats.republished += 1
                    logger.info(
                        "celery-resilience: published parked %s[%s] again: an earlier claim "
                        "ran out (claimed %d times)",
                        safe_token(entry.task_name),
                        safe_token(entry.task_id),
                        entry.claims,
                    )
                try:
                    parked.done(entry.id)
                except STORE_ERRORS as exc:
                    self._store_error(exc)
                    return

    def _store_error(self, exc: BaseException) -> None:
        self.stats.store_errors += 1
        self._failures += 1
        self.stats.last_error = f"store: {type(exc).__name__}: {exc}"[:200]
        if not self._store_down:
            self._store_down = True
            logger.warning(
                "celery-resilience: the parked set cannot be reached (%s); parked tasks "
                "wait until it answers",
                type(exc).__name__,
            )
