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
  callers of an upstream make ``requests`` calls and ``accepts`` of them succeed. With a
  sending ratio R, the share of calls shed locally is
  ``max(0, (requests - R * accepts) / (requests + 1))`` (client-side throttling, as in
  Google's SRE book): calls are sent at about R times the rate the upstream accepts
  them, so that a degraded upstream still gets all the work it can do and not much more.
  An upstream that accepts nothing is down: that is the breaker's case, and nothing is
  shed (nor on fewer than ``minimum_calls`` requests, nor while fewer than one call in
  twenty accepted is refused: the share shrinks in proportion, so that a recovered
  upstream gets the waiting work back at once).
- **Finding the upstream's capacity.** No one ratio suits both kinds of degradation: an
  upstream failing 40 % of calls at random needs 1.67 calls per call accepted to finish
  the work, while to an overloaded one every call beyond its capacity is a wasted call.
  What tells them apart is whether accepts grow with the calls sent. So the throttle
  probes, as BBR probes a link's bandwidth: in the window's buckets of odd number it sends
  up to ``1 + (R - 1) * 1.5`` per call accepted, in even ones ``1 + (R - 1) * 0.5``, and
  compares what each accepted. The marginal acceptance (accepted per extra call sent)
  over the mean acceptance places R between ``throttle`` K (accepts grow in proportion:
  random failures) and ``1 + (K - 1) * 0.3`` (accepts do not grow: capacity); a prior of
  a few calls' worth keeps it at K until the evidence says otherwise. While the window's
  finished buckets include one in which the throttle shed, a bucket is evidence only
  when it shed or the bucket just before it did (``probe_of``): two buckets running
  that shed nothing both sent every call there was, and what they got accepted
  compares chance, which can look like capacity.
- **Requests at capacity.** Shed calls come back, so an upstream at capacity sees its
  requests grow; counted over the horizon they lag, and the calls sent now overshoot R
  times the accepts. So at capacity the throttle judges as many requests as the horizon
  would hold at the rate of its last bucket and the current one (``judged_requests``).
  While accepts grow with the calls sent it keeps the horizon's count, whose lag lets a
  surge of waiting calls through to an upstream failing at random (paced, its sends
  could grow only by R times the share accepted per horizon: 1.08 at 40 % failing). In
  between, in proportion to the sending ratio.
- **Shedding evenly.** Each call is shed with the probability the share sets, corrected
  by what was shed before: the share is added to what is owed to shedding, a call is
  shed when a uniform draw falls below what is owed, and one call is then paid off
  (``shed_call``). So over any run of calls the count shed is within two of the sum of
  their shares, where independent draws would stray by its square root; the calls sent
  come at an even pace rather than in random clusters, and an upstream at capacity
  refuses fewer of them.
- **Held closed at capacity.** While the throttle is on, a window of mixed outcomes whose
  failure share is under two thirds does not open the breaker until the probe counts
  three buckets of each kind and finds that accepts grow with the calls sent: at capacity
  the throttle holds the failures to about ``R - 1`` per success, and an open breaker
  would only waste what the upstream can serve. An outage (no success in the throttle's
  horizon), or a larger failure share, is judged as always.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "Bucket",
    "Probe",
    "confidence_z",
    "excess_share",
    "failure_floor",
    "held_closed",
    "judged_requests",
    "probe_of",
    "probe_ratio",
    "retry_allowance",
    "sending_ratio",
    "shed_call",
    "shed_share",
    "trips",
]

#: How far the probe's buckets send above (odd) and below (even) the sending ratio's excess.
PROBE_SPREAD = 0.5
#: The least share of the throttle's excess (R - 1) the sending ratio keeps: at capacity.
CAPACITY_FLOOR = 0.3
#: Calls' worth of evidence the probe assumes before it has any.
PROBE_PRIOR = 6
#: Below this share of the throttle's excess the probe finds the upstream at capacity.
AT_CAPACITY = 0.6
#: Finished buckets of each kind the probe needs before it may let the breaker open.
EVIDENCE_BUCKETS = 3
#: A failure share from which the breaker is never held closed.
HELD_SHARE = 2 / 3
#: Calls refused per call accepted below which nothing needs bounding (less is shed).
QUIET = 0.05


class Bucket(NamedTuple):
    """One finished bucket of a breaker's window, as the probe reads it: its number (its
    start over its width), the calls sent in it (successes and failures), those
    accepted, and whether the throttle shed any call in it."""

    number: int
    sent: int
    accepted: int
    shed: bool


class Probe(NamedTuple):
    """Calls sent (successes and failures) and accepted in the window's finished buckets
    of odd and of even number that the probe counts, and how many buckets of each kind
    it counts (see :func:`probe_of`)."""

    sent_odd: int = 0
    accepted_odd: int = 0
    sent_even: int = 0
    accepted_even: int = 0
    odd_buckets: int = 0
    even_buckets: int = 0


def probe_of(buckets: Iterable[Bucket], odd_buckets: int, even_buckets: int) -> Probe:
    """The probe's evidence from the window's finished ``buckets`` (those holding a call),
    of which there are ``odd_buckets`` and ``even_buckets`` since the first, empty ones
    included. While one of the buckets shed, a bucket is evidence when it shed or the
    bucket just before it did, and the counts are of those buckets: two buckets running
    that shed nothing both sent what arrived, and what they got accepted compares
    chance, not sends. While none shed, every bucket is, with the counts given.

    >>> probe_of([Bucket(7, 9, 5, False), Bucket(8, 6, 4, False)], 1, 1)
    Probe(sent_odd=9, accepted_odd=5, sent_even=6, accepted_even=4, odd_buckets=1, even_buckets=1)
    >>> probe_of([Bucket(7, 9, 5, False), Bucket(8, 6, 4, True), Bucket(9, 8, 5, False)], 2, 1)
    Probe(sent_odd=8, accepted_odd=5, sent_even=6, accepted_even=4, odd_buckets=1, even_buckets=1)
    """
    by_number = {b.number: b for b in buckets}
    if any(b.shed for b in by_number.values()):
        kept = [
            b
            for b in by_number.values()
            if b.shed or (b.number - 1 in by_number and by_number[b.number - 1].shed)
        ]
        odd_buckets = sum(b.number % 2 for b in kept)
        even_buckets = len(kept) - odd_buckets
    else:
        kept = list(by_number.values())
    odd = [b for b in kept if b.number % 2 == 1]
    even = [b for b in kept if b.number % 2 == 0]
    return Probe(
        sum(b.sent for b in odd),
        sum(b.accepted for b in odd),
        sum(b.sent for b in even),
        sum(b.accepted for b in even),
        odd_buckets,
        even_buckets,
    )


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


def shed_share(requests: float, accepts: int, refused: int, ratio: float, minimum: int) -> float:
    """The share of calls to shed at ``ratio`` calls sent per call accepted, given the
    horizon's requests (sent or shed), accepts and calls sent but not accepted
    (``refused``: failures, 429s): 0 when ``ratio`` is 0 (no throttling), with
    fewer than ``minimum`` requests (too few to judge), or when the upstream accepted none
    (an outage: the breaker's to cut off, and shedding would only slow its opening and,
    after it, the recovery); scaled down while fewer than ``QUIET`` calls per accept are
    refused.

    >>> shed_share(100, 60, 40, 1.8, 5), round(shed_share(100, 30, 70, 1.8, 5), 3)
    (0.0, 0.455)
    """
    if ratio <= 0 or accepts <= 0 or requests < max(minimum, 1):
        return 0.0
    share = max(0.0, (requests - ratio * accepts) / (requests + 1))
    return share * min(1.0, refused / (QUIET * accepts))


def excess_share(probe: Probe, guess: float) -> float:
    """The sending ratio's share of the throttle's excess, from ``CAPACITY_FLOOR`` (the
    probe's busier buckets got no more accepted: capacity) to 1 (they got more in
    proportion: random failures); ``guess`` is the share assumed without evidence."""
    odd, even = probe.odd_buckets, probe.even_buckets
    if odd <= 0 or even <= 0 or probe.accepted_odd + probe.accepted_even <= 0:
        return guess
    so, ao = probe.sent_odd / odd, probe.accepted_odd / odd
    se, ae = probe.sent_even / even, probe.accepted_even / even
    per = (odd + even) / 2
    mean = (ao + ae) / (so + se)
    more, gained = (so - se) * per, (ao - ae) * per
    if more < 0:
        more, gained = -more, -gained
    marginal = (gained + mean * guess * PROBE_PRIOR) / (more + PROBE_PRIOR)
    return min(1.0, max(CAPACITY_FLOOR, marginal / mean))


def sending_ratio(probe: Probe, throttle: float | None) -> float:
    """Calls to send per call accepted: ``throttle`` while the probe finds that accepts
    grow with the calls sent (and until it has evidence), down to
    ``1 + (throttle - 1) * CAPACITY_FLOOR`` while they do not; 0 without throttling.

    >>> round(sending_ratio(Probe(300, 180, 200, 120, 5, 5), 1.8), 2)  # 60 % accepted
    1.8
    >>> round(sending_ratio(Probe(300, 150, 200, 150, 5, 5), 1.8), 2)  # 30/s at most
    1.24
    """
    if throttle is None:
        return 0.0
    if throttle <= 1:
        return throttle
    return 1 + (throttle - 1) * excess_share(probe, 1.0)


def judged_requests(
    requests: float, at_recent_rate: float, ratio: float, throttle: float | None
) -> float:
    """The requests the throttle judges: the horizon's count (``requests``) while the
    sending ratio is ``throttle`` (accepts grow with the calls sent), as many as the
    recent request rate gives over the horizon (``at_recent_rate``) while the ratio is at
    the capacity floor, and in proportion between.

    >>> judged_requests(300, 450, 1.8, 1.8), judged_requests(300, 450, 1.24, 1.8)
    (300.0, 450.0)
    """
    if throttle is None or throttle <= 1:
        return float(requests)
    excess = (ratio - 1) / (throttle - 1)
    weight = min(1.0, max(0.0, (1 - excess) / (1 - CAPACITY_FLOOR)))
    return requests + (at_recent_rate - requests) * weight


def shed_call(share: float, owed: float, draw: float) -> tuple[bool, float]:
    """Whether to shed a call at ``share``, given what is ``owed`` to shedding by the calls
    before it and a ``draw`` uniform in [0, 1); and what is owed after it. Nothing is
    shed, and nothing owed, at a share of 0. What is owed stays within [-1, 1).

    >>> shed_call(0.25, 0.0, 0.5), shed_call(0.25, 0.5, 0.5), shed_call(0.0, 0.5, 0.0)
    ((False, 0.25), (True, -0.25), (False, 0.0))
    """
    if share <= 0:
        return False, 0.0
    owed = min(1.0, max(-1.0, owed)) + share
    if draw < owed:
        return True, owed - 1
    return False, owed


def probe_ratio(ratio: float, odd: bool) -> float:
    """The ratio a bucket of odd (more) or even (fewer) number sends at."""
    if ratio <= 1:
        return ratio
    return 1 + (ratio - 1) * (1 + PROBE_SPREAD if odd else 1 - PROBE_SPREAD)


def held_closed(
    failures: int, calls: int, recent_accepts: int, probe: Probe, throttle: float | None
) -> bool:
    """Whether a breaker whose window trips stays closed, the upstream being (as far as
    the probe can tell yet) at capacity: see the module's notes."""
    if throttle is None or throttle <= 1 or recent_accepts <= 0:
        return False
    if failures >= HELD_SHARE * calls:
        return False
    if min(probe.odd_buckets, probe.even_buckets) < EVIDENCE_BUCKETS:
        return True
    return excess_share(probe, CAPACITY_FLOOR) < AT_CAPACITY


def retry_allowance(first_attempts: int, *, budget: float, floor: float, window: float) -> float:
    """How many retries a window with ``first_attempts`` first attempts may hold: at
    least ``floor`` a second over the ``window``, else ``budget`` per first attempt."""
    return max(floor * window, budget * first_attempts)
