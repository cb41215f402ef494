"""Dead letters: a bounded Redis stream of tasks that gave up or failed permanently.

Nothing is deleted but by :meth:`DeadLetters.purge` (and the stream's length bound,
``resilience_dead_letters_max``, which trims the oldest entries).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from celery_resilience.state.keys import KeySpace

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celery_resilience.state.connect import Client

__all__ = ["DeadLetter", "DeadLetters", "capped_repr"]

_REPR_LIMIT = 2_000


def capped_repr(value: object, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (task arguments can be huge)."""
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not lose the letter
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One task that will not run again unless an operator requeues it."""

    task_name: str
    task_id: str
    args: str
    kwargs: str
    args_json: str | None
    kwargs_json: str | None
    verdict: str
    cause: str
    reason: str
    trace_id: str
    attempts: int
    history: tuple[str, ...]
    worker: str
    queue: str | None
    failed_at: float
    first_attempt_at: float | None
    id: str = ""
    #: Where the failed message was published: its exchange ("" is the default exchange,
    #: whose routing key is a queue name) and routing key. A requeue publishes there again.
    #: None on letters written before they were kept.
    exchange: str | None = None
    routing_key: str | None = None

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        data = asdict(self)
        data.pop("id")
        data["history"] = list(self.history)
        return {"letter": json.dumps(data, ensure_ascii=True)}

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        """Rebuild a letter from a stream entry."""
        data: dict[str, Any] = json.loads(fields["letter"])
        data["history"] = tuple(data.get("history", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(id=entry_id, **{k: v for k, v in data.items() if k in known})


class DeadLetters:
    """The dead-letter stream in Redis."""

    def __init__(self, client: Client, keys: KeySpace, maxlen: int = 10_000) -> None:
        self.client = client
        self.key = keys.dead_letters()
        self.maxlen = maxlen

    def add(self, letter: DeadLetter) -> str:
        """Append a letter; returns its stream ID."""
        fields: dict[Any, Any] = letter.fields()
        raw = self.client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        return _text(raw)

    def count(self) -> int:
        """How many letters the stream holds."""
        return int(self.client.xlen(self.key))

    def list(self, limit: int = 50) -> list[DeadLetter]:
        """The newest ``limit`` letters, newest first (an unreadable entry is shown as one
        whose reason says so, rather than hiding the others)."""
        entries = self.client.xrevrange(self.key, count=limit) or []
        return [_letter(entry) for entry in entries]

    def get(self, entry_id: str) -> DeadLetter | None:
        """One letter by its stream ID (None when there is none)."""
        entries = self.client.xrange(self.key, min=entry_id, max=entry_id, count=1)
        return _letter(entries[0]) if entries else None

    def delete(self, entry_id: str) -> bool:
        """Remove one letter (after a requeue). True when it existed."""
        return bool(self.client.xdel(self.key, entry_id))

    def scan(self, batch: int = 500) -> Iterator[DeadLetter]:
        """Every letter, oldest first, read in batches of ``batch``."""
        start = "-"
        while True:
            entries = self.client.xrange(self.key, min=start, max="+", count=batch) or []
            for entry in entries:
                yield _letter(entry)
            if len(entries) < batch:
                return
            start = "(" + _text(entries[-1][0])

    def purge(self, older_than: float | None = None, *, now: float | None = None) -> int:
        """Remove every letter, or those older than ``older_than`` seconds. Returns how many."""
        if older_than is None:
            removed = self.count()
            self.client.delete(self.key)
            return removed
        if now is None:
            seconds, micros = self.client.time()
            now = seconds + micros / 1e6
        cutoff_ms = int((now - older_than) * 1000)
        before = self.count()
        self.client.xtrim(self.key, minid=str(cutoff_ms), approximate=False)
        return before - self.count()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _letter(entry: Any) -> DeadLetter:
    entry_id, fields = entry
    try:
        return DeadLetter.from_entry(
            _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
        )
    except (KeyError, TypeError, ValueError) as exc:
        return DeadLetter(
            task_name="?",
            task_id="?",
            args="",
            kwargs="",
            args_json=None,
            kwargs_json=None,
            verdict="?",
            cause="?",
            reason=f"unreadable entry ({type(exc).__name__})",
            trace_id="?",
            attempts=0,
            history=(),
            worker="?",
            queue=None,
            failed_at=0.0,
            first_attempt_at=None,
            id=_text(entry_id),
        )
