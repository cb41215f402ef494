"""Per-process runtime of one Celery app: its settings, its state store, its caches.

Built lazily in the process that runs attempts (a prefork child builds its own after the
fork: connections are never shared across processes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery_resilience import signals
from celery_resilience.core import clock, process
from celery_resilience.core.ahead import may_ask_ahead
from celery_resilience.core.gates import (
    BreakerState,
    Denial,
    GateAnswer,
    GateAsk,
    OutcomeReport,
    RecordAnswer,
    Transition,
)
from celery_resilience.core.keying import shown
from celery_resilience.integration.grants_ahead import GrantsAhead
from celery_resilience.integration.named import PolicyBook
from celery_resilience.integration.settings import Settings, read_settings
from celery_resilience.observability import counters, metrics
from celery_resilience.observability.breakers import describe_transition
from celery_resilience.observability.redaction import redact
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.connect import connect, describe
from celery_resilience.state.deadletters import DeadLetter, DeadLetters
from celery_resilience.state.deferred import DeferredSuccesses
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.fallback import FallbackStore
from celery_resilience.state.overrides import Overrides
from celery_resilience.state.redis import RedisStore

if TYPE_CHECKING:
    from celery import Celery

    from celery_resilience.core.limits import CircuitBreaker, RateLimit

__all__ = ["Runtime", "connect", "flush_held", "prepared_letter", "runtime_for"]

logger = logging.getLogger("celery_resilience.integration.runtime")
_PENDING_LETTERS = 1_000
#: Seconds between two tries to store the dead letters kept while the store was down.
_LETTER_RETRY = 2.0
#: Seconds an OPEN verdict is answered from memory before Redis is asked again.
_OPEN_CACHE = 1.0
#: Entries of the OPEN cache (one per breaker, or key of a keyed breaker) before the
#: stale ones are dropped.
_OPEN_CACHE_MAX = 4096


class Runtime:
    """Settings, store and caches of one app in one process."""

    def __init__(self, app: Celery, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or read_settings(app)
        #: the app's (hard, soft) time limits, read once: Celery's configuration lookup
        #: costs more than the rest of reading a task's limits
        self.time_limits: tuple[float | None, float | None] = (
            app.conf.task_time_limit,
            app.conf.task_soft_time_limit,
        )
        self.client = connect(
            self.settings.backend_url,
            timeout=self.settings.redis_timeout,
            ssl=self.settings.ssl,
        )
        self.shared = RedisStore(self.client, self.settings.keys)
        where = f"state store {describe(self.client)}"
        mode = self.settings.fallback

        def fell_back() -> None:
            counters.fell_back()
            if signals.backend_fallback.receivers:
                signals.backend_fallback.send(sender=where, mode=mode)

        self.store = FallbackStore(self.shared, mode=mode, describe=where, on_fallback=fell_back)
        self.policies = PolicyBook(
            app,
            Overrides(self.client, self.settings.keys),
            reachable=lambda: not self.store.degraded,
        )
        self.dead_letters = DeadLetters(
            self.client, self.settings.keys, self.settings.dead_letters_max
        )
        #: (breaker name, key) -> (cache valid until, open until), on the monotonic clock
        self._open_until: dict[tuple[str, str | None], tuple[float, float]] = {}
        self._offset = 0.0
        self._pending: deque[DeadLetter] = deque(maxlen=_PENDING_LETTERS)
        self._lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._stopping = threading.Event()
        #: a plain success's report, counted late with others (each breaker's count goes
        #: in a call of its own, so a Redis Cluster's slots are kept too)
        self.successes = DeferredSuccesses(self.store.record, on_transitions=_announce)
        #: grants ahead this process holds (:mod:`celery_resilience.core.ahead`)
        self.ahead = GrantsAhead(self.settings.grants_ahead)

    # -- time ----------------------------------------------------------------------------

    def _learn_time(self, store_now: float) -> None:
        self._offset = store_now - clock.now()

    def estimated_now(self) -> float:
        """The store's clock as last seen, moved on by the local clock since."""
        return clock.now() + self._offset

    def now(self) -> float:
        """The store's clock (Redis ``TIME``); the local clock while Redis is down."""
        if self.store.degraded:
            return self.estimated_now()
        try:
            seconds, micros = self.client.time()
        except STORE_ERRORS:
            return clock.now()
        now = seconds + micros / 1e6
        self._learn_time(now)
        return now

    # -- gates ---------------------------------------------------------------------------

    def gate(self, ask: GateAsk, *, cached: bool = True) -> GateAnswer:
        """Ask the gates. A breaker seen OPEN in the last second is answered from memory
        (``cached``), so a long outage costs no Redis round trip per deferred task, while
        an operator's reset still reaches this process within a second."""
        if cached and ask.breaker is not None:
            wait = self._open_for(ask.breaker)
            if wait is not None:
                return GateAnswer(
                    allowed=False,
                    now=self.estimated_now(),
                    wait=wait,
                    denial=Denial.BREAKER_OPEN,
                    breaker_state=BreakerState.OPEN,
                    open_until=self.estimated_now() + wait,
                )
        if ask.empty:
            return GateAnswer(allowed=True, now=self.estimated_now())
        if self.ahead.most and may_ask_ahead(ask) and not self.store.degraded:
            wait = self.ahead.take(ask)
            if wait is not None:
                self._granted_ahead(ask.breaker, ask.limiter, wait)
                return GateAnswer(
                    allowed=True,
                    now=self.estimated_now(),
                    breaker_state=BreakerState.CLOSED if ask.breaker is not None else None,
                )
            ask = replace(ask, ahead=self.ahead.wanted(ask))
        sent_at = clock.monotonic()
        answer = self.store.gate(ask)
        if not answer.fallback:
            self.ahead.keep(ask, answer, sent_at=sent_at)
            self._learn_time(answer.now)
            self._flush_letters()
        if answer.allowed and ask.limiter is not None:
            metrics.count_limiter_grant(ask.limiter.name)
        if (
            ask.breaker is not None
            and answer.denial is Denial.BREAKER_OPEN
            and answer.breaker_state is BreakerState.OPEN
        ):
            self._remember_open((ask.breaker.name, ask.breaker.bound_key), answer.wait)
        return answer

    def go_ahead(
        self, breaker: CircuitBreaker | None, limiter: RateLimit | None, *, cached: bool = True
    ) -> bool:
        """Let in an attempt behind these gates (of the kind
        :func:`~celery_resilience.core.ahead.may_go_ahead` allows) on a grant ahead this
        process holds, with no ask built: True once it may run (it waited for its slot),
        as :meth:`gate` would have let it in. False when there is none, or when the gate
        would answer otherwise (a breaker seen open, with ``cached``; a store down): the
        attempt asks then."""
        if not self.ahead.most or self.store.degraded:
            return False
        if cached and breaker is not None and self._open_for(breaker) is not None:
            return False
        wait = self.ahead.use(
            breaker.name if breaker is not None else None,
            limiter.name if limiter is not None else None,
        )
        if wait is None:
            return False
        self._granted_ahead(breaker, limiter, wait)
        return True

    def _granted_ahead(
        self, breaker: CircuitBreaker | None, limiter: RateLimit | None, wait: float
    ) -> None:
        """An attempt granted ahead by an earlier gate call (no round trip): waits for
        its limit's spacing, and counts the call for the breaker's adaptive throttling."""
        if limiter is not None:
            if wait > 0:
                self.wait_in_place(wait, limiter.name)
            metrics.count_limiter_grant(limiter.name)
        if breaker is not None and breaker.throttle:
            self.successes.add(breaker, sent=True)

    def _open_for(self, breaker: CircuitBreaker) -> float | None:
        """Seconds ``breaker`` stays open, as seen in this process within the last
        second; None when it was not seen open then."""
        seen = self._open_until.get((breaker.name, breaker.bound_key))
        if seen is None:
            return None
        mono = clock.monotonic()
        return seen[1] - mono if mono < seen[0] and mono < seen[1] else None

    def wait_in_place(self, seconds: float, limiter: str) -> None:
        """A booked rate-limit slot a moment away is waited for here (at most
        :data:`~celery_resilience.core.decide.IN_PLACE` seconds)."""
        metrics.count_limiter_in_place(limiter, seconds)
        time.sleep(seconds)

    def _remember_open(self, name: tuple[str, str | None], wait: float) -> None:
        mono = clock.monotonic()
        if len(self._open_until) >= _OPEN_CACHE_MAX:  # many keys: keep the live entries
            self._open_until = {k: v for k, v in self._open_until.items() if mono < v[0]}
        self._open_until[name] = (mono + _OPEN_CACHE, mono + wait)

    def hold_success(self, breaker: CircuitBreaker) -> bool:
        """Hold a success of ``breaker`` that
        :func:`~celery_resilience.core.gates.success_deferrable` allows, to be counted
        late with others, with no report built: False when it must be reported now (the
        store is down), as :meth:`record` would."""
        if self.store.degraded:
            return False
        self.successes.add(breaker)
        return True

    def record(self, report: OutcomeReport) -> RecordAnswer:
        """Report an outcome; remember an OPEN verdict it produced. A plain success is
        held and counted later, with others (:mod:`celery_resilience.state.deferred`)."""
        if report.empty:
            return RecordAnswer(now=self.estimated_now())
        if report.breaker is not None:
            if report.deferrable and not self.store.degraded:
                self.successes.add(report.breaker)
                return RecordAnswer(now=self.estimated_now())
            if report.breaker_outcome == "failure":
                self.ahead.drop(breaker=report.breaker.name)
            report = self.successes.take(report)
        if report.limiter is not None and report.pause:
            self.ahead.drop(limiter=report.limiter.name)
        answer = self.store.record(report)
        if not answer.fallback:
            self._learn_time(answer.now)
        if report.limiter is not None and report.pause:
            metrics.count_limiter_pause(report.limiter.name)
        if report.breaker is not None and answer.breaker_state is BreakerState.OPEN:
            self._remember_open(
                (report.breaker.name, report.breaker.bound_key),
                max(answer.open_until - answer.now, 0.0),
            )
        return answer

    # -- dead letters --------------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Store a dead letter; while Redis is down keep it (bounded) and retry from a
        thread every few seconds; a process that stops with letters still unstored writes
        each to its log (see :meth:`flush`).

        Its shown fields are redacted, and a letter written inside the attempt of its
        task gets the exchange and routing key the message came by (a requeue sends it
        there again)."""
        letter = prepared_letter(letter, self.app.current_worker_task)
        metrics.count_dead_letter(letter.task_name, letter.verdict)
        try:
            self.dead_letters.add(letter)
        except STORE_ERRORS as exc:
            with self._lock:
                self._pending.append(letter)
                self._start_retrier()
            logger.error(  # noqa: TRY400 - the cause is named; a traceback adds nothing
                "celery-resilience: dead letter for %s[%s] kept in memory until the state "
                "store answers (%s)",
                letter.task_name,
                letter.task_id,
                type(exc).__name__,
            )
        else:
            self._flush_letters()

    def _start_retrier(self) -> None:
        """Start the thread that stores kept letters (caller holds the lock)."""
        if self._retrier is not None:
            return
        self._retrier = threading.Thread(
            target=self._retry_letters, name="celery-resilience-dead-letters", daemon=True
        )
        self._retrier.start()

    def _retry_letters(self) -> None:
        # the thread ends only under the lock with nothing kept, so a letter kept at that
        # moment either is seen here or starts a thread of its own
        while not self._stopping.wait(_LETTER_RETRY):
            if self._flush_letters():
                with self._lock:
                    if not self._pending:
                        self._retrier = None
                        return

    def _flush_letters(self) -> bool:
        """Store the kept letters, oldest first; False when the store still fails."""
        while self._pending:
            with self._lock:
                if not self._pending:
                    return True
                letter = self._pending[0]
            try:
                self.dead_letters.add(letter)
            except STORE_ERRORS:
                return False
            with self._lock:
                if self._pending and self._pending[0] is letter:
                    self._pending.popleft()
        return True

    def flush(self) -> None:
        """What a stopping process holds: its late successes are reported, its kept dead
        letters stored; a letter the store still refuses goes to the log, whole but for
        the message copies kept for a requeue, so that it is not lost with the process."""
        self._stopping.set()
        self.successes.flush()
        if self._flush_letters():
            return
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
        for letter in left:
            kept = replace(letter, args_json=None, kwargs_json=None)
            logger.error(
                "celery-resilience: dead letter for %s[%s] not stored, the state store "
                "is unreachable; the letter: %s",
                letter.task_name,
                letter.task_id,
                kept.fields()["letter"],
            )


def _announce(transitions: tuple[Transition, ...]) -> None:
    """Log and signal the breaker transitions a late count of successes caused."""
    for tr in transitions:
        logger.warning("breaker %s: %s", shown(repr(tr.name), tr.key), describe_transition(tr))
    signals.send_transitions(transitions)


def flush_held() -> None:
    """What every runtime of this process holds, reported or stored (a process that
    stops): see :meth:`Runtime.flush`."""
    pid = process.pid()
    for owner, rt in list(_runtimes.values()):
        if owner == pid:
            rt.flush()


def prepared_letter(letter: DeadLetter, task: Any = None) -> DeadLetter:
    """``letter`` ready to store: arguments, cause, reason and history redacted (the
    JSON copies kept for a requeue are the task's own message and stay as they are), and
    the route of ``task``'s current message when it is the letter's task."""
    route: dict[str, Any] = {}
    request = getattr(task, "request", None)
    if request is not None and request.id is not None and safe_token(request.id) == letter.task_id:
        delivery = request.delivery_info or {}
        if letter.exchange is None and isinstance(delivery.get("exchange"), str):
            route["exchange"] = delivery["exchange"]
        if letter.routing_key is None and isinstance(delivery.get("routing_key"), str):
            route["routing_key"] = delivery["routing_key"]
    return replace(
        letter,
        args=redact(letter.args),
        kwargs=redact(letter.kwargs),
        cause=redact(letter.cause),
        reason=redact(letter.reason),
        history=tuple(redact(line) for line in letter.history),
        **route,
    )


_runtimes: dict[int, tuple[int, Runtime]] = {}
_runtimes_lock = threading.Lock()


def runtime_for(app: Celery) -> Runtime:
    """The runtime of ``app`` in this process (a fresh one after a fork)."""
    pid = process.pid()
    key = id(app)
    found = _runtimes.get(key)
    if found is not None and found[0] == pid:
        return found[1]
    with _runtimes_lock:
        found = _runtimes.get(key)
        if found is None or found[0] != pid:
            found = (pid, Runtime(app))
            _runtimes[key] = found
        return found[1]
