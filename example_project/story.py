"""The demo's scripted story: what the upstream answers when, and which tasks are sent.

Five phases, the same for the resilient tasks and for the plain-Celery baseline (which
call the upstream under ``/baseline``):

1. healthy: every API answers 200; a burst of CRM syncs tests the rate limits;
2. outage: the billing API answers 503 (the CRM stays up);
3. throttling: the CRM answers 429 with ``Retry-After``;
4. bad input: some tasks ask for an unknown currency (400) or invoice (404);
5. recovery: everything answers 200; the tasks drain.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from example_project.upstream import Response

__all__ = ["APIS", "Phase", "Send", "Story", "make_story"]

APIS = ("billing", "crm")
"""The upstream's APIs, each under its own path prefix (``/billing``, ``/crm``)."""
BAD_CURRENCY = "XXX"
"""A currency the billing API does not know: 400."""


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase: how long it lasts, what each API answers, and what is sent."""

    name: str
    seconds: float
    answers: dict[str, Response] = field(hash=False)
    caption: str
    bad_input: bool = False

    def answer(self, api: str, ok: Response) -> Response:
        """What ``api`` answers in this phase, for a path that answers ``ok`` when healthy."""
        answer = self.answers.get(api, Response(200))
        return ok if answer.status == 200 else answer


@dataclass(frozen=True, slots=True)
class Send:
    """One task to send at ``at`` seconds into the story (to both sides)."""

    at: float
    kind: str  # "rates", "charge" or "crm"
    args: tuple[str | int, ...]
    phase: str
    bad: bool = False


@dataclass(frozen=True, slots=True)
class Story:
    """The phases (the last one, recovery, ends when the tasks have drained) and the sends."""

    phases: tuple[Phase, ...]
    per_second: float
    crm_burst: int
    recovery_sends: float
    drain_limit: float

    @property
    def scripted_seconds(self) -> float:
        """Seconds until the recovery phase starts."""
        return sum(p.seconds for p in self.phases[:-1])

    def bounds(self) -> list[tuple[str, float, float | None]]:
        """``(name, start, end)`` of each phase in seconds from the story's start."""
        out: list[tuple[str, float, float | None]] = []
        start = 0.0
        for phase in self.phases[:-1]:
            out.append((phase.name, start, start + phase.seconds))
            start += phase.seconds
        out.append((self.phases[-1].name, start, None))
        return out

    def phase_at(self, t: float) -> Phase:
        """The phase in force ``t`` seconds into the story."""
        for phase, (_, start, end) in zip(self.phases, self.bounds(), strict=True):
            if t >= start and (end is None or t < end):
                return phase
        return self.phases[0]

    def upstream_phases(self, api: str, ok: Response) -> list[tuple[float | None, Response]]:
        """The upstream script of one path: the story's phases, ``ok`` when healthy."""
        pairs: list[tuple[float | None, Response]] = [
            (p.seconds, p.answer(api, ok)) for p in self.phases[:-1]
        ]
        pairs.append((None, ok))
        return pairs

    def sends(self) -> list[Send]:
        """Every task of the story, in time order (the same list every time)."""
        counter = itertools.count(1)
        out = [
            Send(0.0, "crm", (f"C-{next(counter):04d}",), self.phases[0].name)
            for _ in range(self.crm_burst)
        ]
        end = self.scripted_seconds + self.recovery_sends
        step = 1.0 / self.per_second
        kinds = itertools.cycle(("rates", "charge", "crm", "charge"))
        currencies = itertools.cycle(("EUR", "USD", "GBP", "JPY", "CHF"))
        every_other = itertools.cycle((True, False))
        t = step
        while t < end:
            phase = self.phase_at(t)
            n = next(counter)
            kind = next(kinds)
            bad = phase.bad_input and kind != "crm" and next(every_other)
            out.append(Send(round(t, 3), kind, _args(kind, n, bad, currencies), phase.name, bad))
            t += step
        return out

    def bad_paths(self) -> Iterator[tuple[str, Response]]:
        """The paths (under an API's prefix) that answer a permanent error, and that error."""
        yield f"/billing/rates/{BAD_CURRENCY}", Response(400, body={"error": "unknown currency"})
        for send in self.sends():
            if send.bad and send.kind == "charge":
                yield (
                    f"/billing/invoices/{send.args[0]}",
                    Response(404, body={"error": "no such invoice"}),
                )


def _args(kind: str, n: int, bad: bool, currencies: Iterator[str]) -> tuple[str | int, ...]:
    if kind == "rates":
        return (BAD_CURRENCY if bad else next(currencies),)
    if kind == "charge":
        return (f"{'MISSING' if bad else 'INV'}-{n:04d}", 100 * (n % 50 + 1))
    return (f"C-{n:04d}",)


def make_story(*, quick: bool) -> Story:
    """The default story (about 50 s), or the quick one (about 15 s)."""
    healthy, outage, throttling, bad = (3.0, 6.0, 3.0, 2.0) if quick else (8.0, 20.0, 8.0, 6.0)
    throttled = Response(429, retry_after=2, body={"error": "slow down"})
    down = Response(503, body={"error": "maintenance"})
    phases = (
        Phase("healthy", healthy, {}, "every API answers 200; a burst of CRM syncs"),
        Phase("outage", outage, {"billing": down}, "the billing API answers 503"),
        Phase("throttling", throttling, {"crm": throttled}, "the CRM answers 429, Retry-After: 2"),
        Phase("bad input", bad, {}, "unknown currencies (400) and invoices (404)", bad_input=True),
        Phase("recovery", 0.0, {}, "every API answers 200; the tasks drain"),
    )
    return Story(
        phases=phases,
        per_second=6.0,
        crm_burst=20 if quick else 30,
        recovery_sends=2.5 if quick else 4.0,
        drain_limit=10.0 if quick else 30.0,
    )
