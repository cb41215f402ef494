"""Successes counted late: the second round trip taken off a successful gated attempt.

An attempt behind a breaker asks the gates before its body (one ``EVALSHA``) and used to
report its outcome after it (a second one). The report of a plain success (no half-open
probe, no concurrency slot, no limiter pause, no attempt lease) changes nothing anyone
waits for: it adds one to the breaker's success count. So this process keeps those counts,
one integer per breaker (per key of a keyed breaker), and reports them together:

- on the next report that must go at once for the same breaker (a failure, a probe's
  outcome, a slot's release), in the same call: the failure rate that decides whether the
  breaker opens is then computed over every success this process has seen, exactly as if
  each had been reported alone;
- else from a thread of this process, at most :data:`FLUSH_EVERY` seconds after the first
  success it holds;
- and when the process stops (:meth:`DeferredSuccesses.flush`, called at worker process
  shutdown and at exit).

What this changes. Failures are never held, so the breaker opens no later than before;
successes of *other* processes still held (for at most about 0.1 s) make the failure
rate look a little higher, so it may open that much sooner, never later. A success held
while the breaker opens is not counted (as a success reported after it opened never was).
A process killed (``SIGKILL``, out of memory) loses the successes it held: at most 0.1 s
worth, which again only makes the rate look higher. Memory is one counter per breaker.
The calls sent on grants ahead (:mod:`celery_resilience.core.ahead`), which the gate did
not see, are held and reported the same way, for the breaker's adaptive throttling.
A flush that fails goes to the per-process fallback like any other store error; nothing
raises into a task.

What it does not change. An attempt lease's "done" mark keeps a redelivered copy of the
message from running the body again; held back, a worker node lost between the body's
end and the message's ack would leave the mark unwritten and the copy would run the body
once more when the lease expires. That mark is therefore still written at once (an
``acks_late`` task, or ``resilience_duplicate_guard = "always"``, keeps two round trips
per attempt). On Redis Cluster each breaker's count is one call in that breaker's slot.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from celery_resilience.core import process
from celery_resilience.core.gates import OutcomeReport, RecordAnswer, Transition
from celery_resilience.core.keying import shown

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery_resilience.core.limits import CircuitBreaker

__all__ = ["FLUSH_EVERY", "DeferredSuccesses"]

logger = logging.getLogger("celery_resilience.state")

#: Seconds a held success waits at most before a thread reports it (with some room left
#: under 0.1 s for the thread to be scheduled on a busy machine).
FLUSH_EVERY = 0.08


class DeferredSuccesses:
    """Per-process success counts of breakers, reported late and together. Thread-safe.

    ``record`` is the store's report call (the fallback store: errors never reach here);
    ``on_transitions`` receives the breaker transitions a late report caused (an OPEN
    breaker found due to HALF_OPEN).
    """

    def __init__(
        self,
        record: Callable[[OutcomeReport], RecordAnswer],
        *,
        on_transitions: Callable[[tuple[Transition, ...]], None] | None = None,
        every: float = FLUSH_EVERY,
    ) -> None:
        self._record = record
        self._on_transitions = on_transitions
        self._every = every
        self._lock = threading.Lock()
        #: (breaker name, key of a keyed breaker) -> (breaker, successes held, calls sent
        #: on grants ahead held)
        self._counts: dict[tuple[str, str | None], tuple[CircuitBreaker, int, int]] = {}
        self._due = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, breaker: CircuitBreaker, *, sent: bool = False) -> None:
        """Hold one success of ``breaker`` (``sent``: one call sent on a grant ahead,
        for its adaptive throttling)."""
        with self._lock:
            which = (breaker.name, breaker.bound_key)
            held = self._counts.get(which)
            successes, calls = (held[1], held[2]) if held else (0, 0)
            if sent:
                calls += 1
            else:
                successes += 1
            self._counts[which] = (breaker, successes, calls)
            if held is None:
                self._start()
                self._due.set()

    def take(self, report: OutcomeReport) -> OutcomeReport:
        """``report`` carrying the counts held for its breaker (they leave the store
        with it)."""
        if report.breaker is None:
            return report
        with self._lock:
            held = self._counts.pop((report.breaker.name, report.breaker.bound_key), None)
        if held is None:
            return report
        return replace(
            report,
            carried_successes=report.carried_successes + held[1],
            carried_sent=report.carried_sent + held[2],
        )

    @property
    def held(self) -> int:
        """Successes held now, over every breaker."""
        with self._lock:
            return sum(n for _, n, _ in self._counts.values())

    def flush(self) -> None:
        """Report every held success now (one call per breaker); never raises."""
        with self._lock:
            counts, self._counts = self._counts, {}
        for breaker, n, sent in counts.values():
            report = OutcomeReport(
                holder="-",
                breaker=breaker,
                breaker_outcome="neutral",
                carried_successes=n,
                carried_sent=sent,
            )
            try:
                answer = self._record(report)
                if answer.transitions and self._on_transitions is not None:
                    self._on_transitions(answer.transitions)
            except Exception:  # a late count must never break a task or the thread
                logger.warning(
                    "celery-resilience: %d late successes and %d calls sent of %s not counted",
                    n,
                    sent,
                    shown(repr(breaker.name), breaker.bound_key),
                    exc_info=True,
                )

    def _start(self) -> None:
        """Start the flushing thread in this process (again after a fork). Lock held."""
        pid = process.pid()
        if self._thread is not None and self._pid == pid and self._thread.is_alive():
            return
        self._pid = pid
        self._due = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celery-resilience-successes", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        due = self._due
        while True:
            due.wait()
            # the first success held waits at most this long; later ones less
            time.sleep(self._every)
            due.clear()
            self.flush()
            with self._lock:
                if self._counts:
                    due.set()
