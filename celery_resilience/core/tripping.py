"""When a breaker trips, and how much an upstream's callers shed: pure rules over counts.

The state stores (``record.lua``, ``gate.lua`` and the in-process fallback) apply the
same rules; these are their reference, and what the tests check them against.

- **Tripping on evidence, not on noise.** A breaker opens when the failure share of its
  window is at least ``failure_rate`` *with confidence*: the lower Wilson score bound of
  that share, at the breaker's ``confidence``, must reach ``failure_rate``. Four failures
  out of five do not open a breaker at 0.5 (the bound is 0.44), so an upstream failing
  40 % of calls at random does not trip it on a handful of calls, while a window of
  hundreds of calls is judged on its share much as before. A window of nothing but
  failures needs no statistics: it opens the breaker once it holds ``minimum_calls``, so
  an outage is cut off as fast as ever.
- **Adaptive throttling.** Over the last three tenths of the window (recent enough that
  an outage after a healthy spell is not throttled on the successes before it), the
  callers of an upstream make ``requests`` calls and ``accepts`` of them succeed. With
  ``throttle`` K, the share of calls shed locally is
  ``max(0, (requests - K * accepts) / (requests + 1))`` (client-side throttling, as in
  Google's SRE book): nothing is shed while at least one call in K succeeds, and beyond
  that calls are sent at about K times the rate the upstream accepts them, so that a
  degraded upstream still gets all the work it can do and not much more. An upstream
  that accepts nothing is down: that is the breaker's case, and nothing is shed (nor on
  fewer than ``minimum_calls`` requests).
- **Retry budget.** Over the breaker's window, the retries its callers send may number
  at most ``retry_budget`` times the first attempts they send, or ``retry_floor`` a
  second times the window, whichever is more (a quiet upstream can still be retried).
  A retry beyond that waits, or gives up: however flaky the upstream, retries add no more
  than that share to its load (Envoy's and Finagle's retry budgets).
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

__all__ = ["confidence_z", "failure_floor", "retry_allowance", "shed_share", "trips"]


@functools.lru_cache(maxsize=64)
def confidence_z(confidence: float) -> float:
    """The one-sided normal quantile of ``confidence`` (0.95 → 1.645; 0.5 → 0)."""
    return NormalDist().inv_cdf(confidence)


def failure_floor(failures: int, calls: int, z: float) -> float:
    """The lower Wilson score bound of the failure share ``failures / calls`` (0 for no
    calls; the share itself when ``z`` is 0).

    >>> round(failure_floor(5, 5, 1.645), 3), round(failure_floor(3, 5, 1.645), 3)
    (0.649, 0.272)
    """
    if calls <= 0:
        return 0.0
    share = failures / calls
    if z <= 0:
        return share
    z2 = z * z
    centre = share + z2 / (2 * calls)
    spread = z * math.sqrt(share * (1 - share) / calls + z2 / (4 * calls * calls))
    return max(0.0, (centre - spread) / (1 + z2 / calls))


def trips(failures: int, calls: int, *, failure_rate: float, minimum_calls: int, z: float) -> bool:
    """Whether a closed breaker with these counts in its window opens."""
    if calls < minimum_calls or calls <= 0:
        return False
    return failures == calls or failure_floor(failures, calls, z) >= failure_rate


def shed_share(requests: int, accepts: int, throttle: float | None, minimum: int) -> float:
    """The share of calls to shed, given the window's requests and accepts: 0 when
    ``throttle`` is None (no throttling), with fewer than ``minimum`` requests (too few to
    judge), or when the upstream accepted none (an outage: the breaker's to cut off, and
    shedding would only slow its opening and, after it, the recovery).

    >>> shed_share(100, 60, 1.8, 5), round(shed_share(100, 30, 1.8, 5), 3)
    (0.0, 0.455)
    """
    if throttle is None or accepts <= 0 or requests < max(minimum, 1):
        return 0.0
    return max(0.0, (requests - throttle * accepts) / (requests + 1))


def retry_allowance(first_attempts: int, *, budget: float, floor: float, window: float) -> float:
    """How many retries a window with ``first_attempts`` first attempts may hold: at
    least ``floor`` a second over the ``window``, else ``budget`` per first attempt."""
    return max(floor * window, budget * first_attempts)
