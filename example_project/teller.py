"""Telling the story: each task sent on time, to both sides; progress read and shown."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import RenderableType

from example_project.monitor import BreakerWatch, Tracker
from example_project.render import live_view, progress_line
from example_project.story import Send, Story

__all__ = ["Teller"]

POLL = 0.25
"""Seconds between two reads of the task states and the breakers."""
CALLS_POLL = 1.0
"""Seconds between two counts of the upstream's calls, for the live view."""


@dataclass
class Teller:
    """Sends the story's tasks when they are due and keeps what the live view shows.

    ``tasks`` maps a kind of task ("rates", "charge", "crm") to the resilient and the
    baseline task; ``count_calls`` counts the upstream's calls by side.
    """

    story: Story
    tasks: dict[str, tuple[Any, Any]]
    sides: list[str]
    tracker: Tracker
    watch: BreakerWatch
    count_calls: Callable[[], dict[str, int]]
    t0: float
    calls: dict[str, int] = field(default_factory=dict)
    _sends: list[Send] = field(default_factory=list)
    _next: int = 0
    _next_poll: float = 0.0
    _next_calls: float = 0.0

    def __post_init__(self) -> None:
        self._sends = self.story.sends()
        self.calls = dict.fromkeys(self.sides, 0)

    @property
    def elapsed(self) -> float:
        """Seconds since the story started."""
        return time.time() - self.t0

    def step(self) -> None:
        """Send what is due; read states, breakers and calls when it is time."""
        t = self.elapsed
        while self._next < len(self._sends) and self._sends[self._next].at <= t:
            send = self._sends[self._next]
            for side, task in zip(("resilient", "baseline"), self.tasks[send.kind], strict=True):
                if side in self.sides:
                    self.tracker.add(side, send, task.apply_async(args=send.args).id)
            self._next += 1
        if t >= self._next_poll:
            self.tracker.poll()
            self.watch.poll()
            self._next_poll = t + POLL
        if t >= self._next_calls:
            counted = self.count_calls()
            self.calls = {s: counted.get(s, 0) for s in self.sides}
            self._next_calls = t + CALLS_POLL

    def finished(self) -> bool:
        """Whether the story is over: all sent, recovery under way, resilient tasks done.

        The baseline may need minutes more; both sides get the same time.
        """
        story, t = self.story, self.elapsed
        if self._next < len(self._sends) or t < story.scripted_seconds + story.recovery_sends:
            return False
        return self.tracker.settled("resilient") or t >= story.scripted_seconds + story.drain_limit

    def counts(self) -> dict[str, Counter[str]]:
        """Each side's tasks by live state."""
        return {s: self.tracker.live_counts(s) for s in self.sides}

    def view(self) -> RenderableType:
        """The live view now."""
        t = self.elapsed
        phase = self.story.phase_at(t)
        return live_view(
            elapsed=t,
            phases=[p.name for p in self.story.phases],
            phase=phase.name,
            caption=phase.caption,
            counts=self.counts(),
            sent={s: len(self.tracker.of(s)) for s in self.sides},
            calls=self.calls,
            breakers={n: (self.watch.state(n), self.watch.open_remaining(n))
                      for n in ("billing", "crm")},
            paused=self.watch.paused_for,
        )

    def line(self, label: str | None = None) -> str:
        """One line of progress (for output that is not a terminal)."""
        t = self.elapsed
        return progress_line(t, label or self.story.phase_at(t).name, self.counts(), self.calls)
