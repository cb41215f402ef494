"""The worker bootstep: a ``resilience`` section in ``inspect stats`` (and Flower).

Added automatically to every worker whose app has a resilient task (on Celery's
``worker_init`` signal, before the worker builds its bootsteps); :func:`install` adds it
by hand. On a Redis broker the same signal puts the guard of
:mod:`celery_resilience.integration.kombu_redis` in place. The section holds the app's
breakers and limiters as Redis has them now, whether the state store answers, how often
the pool fell back to per-process state, and the node's counters::

    celery -A proj inspect stats   →   {"resilience": {"breakers": {"payments":
        {"state": "open", "failure_rate": 0.8, "calls": 10, ...}}, "limiters": {...},
        "store": {...}, "fallback": {...}, "counters": {...}}, ...}

Before the section, :func:`~celery_resilience.observability.stats_rows.flat_rows` says
the same as flat rows of text (``"resilience: breaker 'payments'": "open, half-open in
4.9 s; ..."``), which Flower's worker page (tab *Other*) shows one per line. The setting
``resilience_stats_section = False`` leaves the section out (the rows only), so that the
tab holds no raw dict.

With the setting ``resilience_metrics`` it also turns metrics on before the pool forks,
serves them on ``resilience_metrics_port`` when set, and refreshes the gauges (breaker
states, limiter waits, fallback, the parked set) from Redis every
``resilience_metrics_interval`` seconds (15).

When parking is on (``resilience_park_after`` > 0) it runs the node's releaser thread
(:mod:`celery_resilience.integration.releaser`), and the section holds a ``parked`` row
set: the parked set's counts (by reason), and what this node's releaser published.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import bootsteps
from celery.signals import worker_init

from celery_resilience.core import clock
from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.integration import kombu_redis
from celery_resilience.integration.inspection import (
    breaker_status,
    declared,
    limiter_row,
    limiter_status,
    retry_budget_row,
)
from celery_resilience.integration.parking import ParkingPlace, parking_place
from celery_resilience.integration.releaser import Releaser
from celery_resilience.integration.settings import read_settings
from celery_resilience.integration.task import resilient_tasks
from celery_resilience.observability import counters
from celery_resilience.observability.stats_rows import flat_rows
from celery_resilience.state.connect import connect as connect_store
from celery_resilience.state.connect import describe
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.parked import PARK_REASONS, ParkedSummary
from celery_resilience.state.redis import RedisStore

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["ResilienceStep", "connect", "install"]

logger = logging.getLogger("celery_resilience.integration.bootstep")

#: ``inspect stats`` waits one second by default: keep each Redis call well below it.
_STATS_TIMEOUT = 0.3
#: A fallback answer this recent (seconds) counts as "fallback active".
_RECENT_FALLBACK = 10.0
_STORE_ERRORS: tuple[type[BaseException], ...] = (ResilienceConfigError, ValueError, *STORE_ERRORS)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ResilienceStep(bootsteps.StartStopStep):
    """Reports breakers, limiters, fallbacks and counters in ``inspect stats``."""

    label = "Resilience"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app: Celery = parent.app
        self.counters = counters.install()  # mapped here: before the pool forks
        self._store: RedisStore | None = None
        self._describe = "?"
        self._mode = "?"
        self._server: Any = None
        self._refresh: Any = None
        self._place: ParkingPlace | None = None
        self.releaser: Releaser | None = None

    # -- the state store -----------------------------------------------------------------

    def _shared(self) -> RedisStore:
        if self._store is None:
            settings = read_settings(self.app)
            self._mode = settings.fallback
            timeout = min(settings.redis_timeout, _STATS_TIMEOUT)
            client = connect_store(settings.backend_url, timeout=timeout, ssl=settings.ssl)
            self._describe = describe(client)
            self._store = RedisStore(client, settings.keys)
        return self._store

    def _parking(self) -> ParkingPlace:
        if self._place is None:
            self._place = parking_place(self.app, timeout=_STATS_TIMEOUT)
        return self._place

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, parent: Any) -> None:
        """Start the releaser (parking on); serve metrics and refresh the gauges (metrics on)."""
        try:
            parking_on = read_settings(self.app).park_after > 0
        except _STORE_ERRORS as exc:
            parking_on = False
            logger.error("celery-resilience: no releaser (%s)", _short(exc))  # noqa: TRY400
        if parking_on and self.releaser is None:
            self.releaser = Releaser(self.app)
            self.releaser.start()
        conf = self.app.conf
        if not conf.get("resilience_metrics"):
            return
        from celery_resilience.observability.metrics import serve_metrics  # noqa: PLC0415 - optional

        pool = type(getattr(parent, "pool", None)).__module__
        if pool.endswith(".prefork") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            logger.warning(
                "celery-resilience: metrics under the prefork pool need "
                "PROMETHEUS_MULTIPROC_DIR (an empty directory); without it each pool "
                "process keeps its own and nothing sums them (docs/metrics.md)"
            )

        port = conf.get("resilience_metrics_port")
        if port is not None:
            self._server = serve_metrics(
                int(port), conf.get("resilience_metrics_addr") or "127.0.0.1"
            )
            logger.info("celery-resilience: metrics on port %s", self._server.server_port)
        interval = float(conf.get("resilience_metrics_interval") or 15.0)
        self._refresh = parent.timer.call_repeatedly(interval, self.refresh_gauges)

    def stop(self, parent: Any) -> None:
        """Stop the releaser, the refresh and the metrics server."""
        if self.releaser is not None:
            self.releaser.stop()
            self.releaser = None
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def terminate(self, parent: Any) -> None:
        """Same as :meth:`stop` (a cold shutdown)."""
        self.stop(parent)

    def refresh_gauges(self) -> None:
        """Set the gauges from Redis (metrics on): each declared breaker's state, each
        limiter's wait (a pause included), whether the fallback answers (the store fails
        here, or a pool process fell back within the last ten seconds), the parked set."""
        from celery_resilience.observability.metrics import (  # noqa: PLC0415 - optional
            set_breaker_state,
            set_fallback_active,
            set_keys,
            set_limiter_wait,
            set_parked,
        )

        reachable = True
        try:
            store = self._shared()
            found = declared(self.app)
            for policy in found.breakers.values():
                if policy.key is None:
                    set_breaker_state(policy.name, breaker_status(store, policy).state)
            for kind, policies in (
                ("breaker", found.breakers.values()),
                ("limiter", found.rates.values()),
                ("concurrency", found.pools.values()),
            ):
                for keyed in (p for p in policies if p.key is not None):
                    ks = store.keys_status(kind, keyed.name)
                    set_keys(kind, keyed.name, ks.live, ks.open if kind == "breaker" else None)
            for name in found.limiter_names:
                status = limiter_status(store, name, found)
                paused = max(status.paused_until - status.now, 0.0) if status.paused_until else 0.0
                set_limiter_wait(name, max(status.wait, paused))
        except _STORE_ERRORS as exc:
            reachable = False
            logger.debug("celery-resilience: gauges not refreshed (%s)", _short(exc))
        last = self.counters.totals()["last_fallback_at"]
        recent = last is not None and clock.now() - last < _RECENT_FALLBACK
        set_fallback_active(not reachable or recent)
        try:
            set_parked(self._parking().parked.summary())
        except _STORE_ERRORS as exc:
            logger.debug("celery-resilience: parked gauges not refreshed (%s)", _short(exc))

    # -- inspect stats -------------------------------------------------------------------

    def info(self, parent: Any) -> dict[str, Any]:  # type: ignore[override]
        """The ``resilience`` section of ``inspect stats``, after the same as flat rows of
        text (``resilience: breaker 'payments'``, ...) that Flower's *Other* tab can show.
        With ``resilience_stats_section = False``, the rows alone."""
        section, now = self.read_section()
        info: dict[str, Any] = flat_rows(section, now)
        if self.app.conf.get("resilience_stats_section", True):
            info["resilience"] = section
        return info

    def read_section(self) -> tuple[dict[str, Any], float | None]:
        """Breakers, limiters, store, fallback and counters of this node, as JSON values;
        and the state store's clock when it was read (None: not read)."""
        totals = self.counters.totals()
        out: dict[str, Any] = {"breakers": {}, "limiters": {}}
        problem: str | None = None
        now: float | None = None
        try:
            store = self._shared()
            found = declared(self.app)
            for name, policy in sorted(found.breakers.items()):
                status = breaker_status(store, policy)
                now = status.now
                is_open = status.open_until > 0
                out["breakers"][name] = {
                    "state": status.state.value,
                    "failure_rate": round(status.failure_rate, 4),
                    "calls": status.calls,
                    "shed": round(status.shed, 4),
                    "retry_budget": retry_budget_row(status, policy),
                    "open_until": round(status.open_until, 1) if is_open else None,
                    "half_open_in": (
                        round(max(status.open_until - status.now, 0.0), 1) if is_open else None
                    ),
                }
            for name in sorted(found.limiter_names):
                limiter = limiter_status(store, name, found)
                now = limiter.now
                row = limiter_row(limiter, found)
                paused = row["paused_until"]
                out["limiters"][name] = {
                    "rate": row["rate"],
                    "wait": round(row["wait"], 2),
                    "in_use": row["in_use"],
                    "concurrency": row["concurrency"],
                    "paused_until": round(paused, 1) if paused else None,
                }
        except _STORE_ERRORS as exc:
            problem = _short(exc)
        last = totals.pop("last_fallback_at")
        recent = last is not None and clock.now() - last < _RECENT_FALLBACK
        out["store"] = {"address": self._describe, "reachable": problem is None, "error": problem}
        out["fallback"] = {
            "active": problem is not None or recent,
            "mode": self._mode,
            "answers": totals.pop("fallbacks"),
            "last_at": last,
        }
        out["counters"] = totals
        out["parked"] = self.parked_rows(store_down=problem is not None)
        return out, now

    def parked_rows(self, *, store_down: bool = False) -> dict[str, Any]:
        """The parked set and this node's releaser, as flat named rows (``store_down``: the
        state store did not answer; it is not asked again, so that the reply stays quick)."""
        releaser = self.releaser
        rows: dict[str, Any] = {"releaser": "running" if releaser and releaser.running else "off"}
        summary: ParkedSummary | None = None
        place = self._place
        if store_down and (place is None or place.store == "state store"):
            rows["error"] = "the state store did not answer"
            place = None
        else:
            try:
                place = self._parking()
                summary = place.parked.summary()
            except _STORE_ERRORS as exc:
                rows["error"] = _short(exc)
        if place is not None:
            rows["store"] = place.where
            rows["durable"] = place.durable
        if summary is not None:
            due_in = summary.oldest_due_in
            rows["count"] = summary.count
            rows["claimed"] = summary.claimed
            rows["oldest_due_in"] = None if due_in is None else round(due_in, 1)
            for reason in PARK_REASONS:
                rows[reason] = summary.by_reason.get(reason, 0)
        if releaser is not None:
            stats = releaser.stats
            rows["published"] = stats.published
            rows["republished"] = stats.republished
            rows["publish_errors"] = stats.publish_errors
            rows["store_errors"] = stats.store_errors
            rows["last_error"] = stats.last_error
        return rows


def install(app: Celery) -> None:
    """Add the bootstep to the workers of ``app`` (idempotent; before the worker starts)."""
    app.steps["worker"].add(ResilienceStep)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or not resilient_tasks(app):
        return
    install(app)
    if _broker_is_redis(app):
        kombu_redis.install()
        kombu_redis.bound_unacked_mutex(app)
    if not app.conf.get("resilience_metrics"):
        return
    from celery_resilience.observability.metrics import DEFAULT_NAMESPACE, enable_metrics  # noqa: PLC0415

    try:
        enable_metrics(namespace=app.conf.get("resilience_metrics_namespace", DEFAULT_NAMESPACE))
    except ImportError as exc:
        logger.error("%s", exc)  # noqa: TRY400 - the message says what to install


def _broker_is_redis(app: Celery) -> bool:
    with app.connection_for_write() as connection:  # not connected: its transport's kind
        return bool(connection.transport.driver_type == "redis")


_connected = False


def connect() -> None:
    """Connect the ``worker_init`` handler (idempotent)."""
    global _connected  # noqa: PLW0603 - one-time wiring
    if not _connected:
        worker_init.connect(_on_worker_init, weak=False)
        _connected = True
