"""The releaser: one thread per worker that publishes parked tasks when they are due.

About every ``resilience_park_poll`` seconds (with +/- 50 % jitter, so that a fleet of
workers does not ask at the same instant) it claims up to 100 due entries for
``resilience_park_lease`` seconds, publishes each through the app's producer pool, and
forgets it. It goes again at once while it finds full batches. A publish that fails
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

from celery_resilience.core import clock
from celery_resilience.integration.parking import parking_place, publish
from celery_resilience.integration.settings import read_settings
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.errors import STORE_ERRORS

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery import Celery

    from celery_resilience.state.parked import ParkedSet

__all__ = ["BATCH", "Releaser", "ReleaserStats", "next_delay"]

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


@dataclass
class ReleaserStats:
    """What the releaser of this worker did (for ``inspect stats``)."""

    published: int = 0
    #: entries published again after another claim ran out (their releaser died or failed)
    republished: int = 0
    publish_errors: int = 0
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

    def _publish_all(self, entries: list[Any]) -> None:
        parked = self._parked
        if parked is None:
            return
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
