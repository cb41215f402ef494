"""The parked set: task messages that wait in Redis, not in a worker, until they are due.

A sorted set by due time, as Sidekiq's scheduled set: :meth:`ParkedSet.park` adds a
message, every worker's releaser calls :meth:`ParkedSet.claim_due` about once a second,
publishes what it claimed, and calls :meth:`ParkedSet.done`. A claim holds a lease: if
the releaser dies before ``done``, the lease runs out and the entry is claimed again by
another (nothing lost; a message published twice runs once: the worker holds an attempt
lease for every released message). Every change is one Lua script (``lua/parked_*.lua``)
on the server's clock; every call is bounded by its ``limit`` (or a page size).

Keys (one hash tag, so one Redis Cluster slot): see :meth:`KeySpace.parked`.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from redis.exceptions import ResponseError

from celery_resilience.state.keys import KeySpace
from celery_resilience.state.scripts import PARKED_SCRIPT_NAMES, ScriptBook

if TYPE_CHECKING:
    from collections.abc import Iterable

    from celery_resilience.state.connect import Client

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PARK_REASONS",
    "ParkReason",
    "ParkRefusedError",
    "ParkedEntry",
    "ParkedSet",
    "ParkedSummary",
    "reports_persistence",
]

ParkReason = Literal[
    "rate_limited", "breaker_open", "backoff", "retry_after", "concurrency", "schedule"
]
#: Every reason a task may be parked for.
PARK_REASONS: tuple[ParkReason, ...] = get_args(ParkReason)
#: The longest message the set accepts (UTF-8 bytes); a longer one is refused, so that
#: the caller falls back to a countdown.
MAX_MESSAGE_BYTES = 1 << 20
#: The longest task name or task ID kept with an entry.
_MAX_NAME = 1024
#: Ids per script call (done, release): bounds the work of one call.
_BATCH = 500


class ParkRefusedError(ValueError):
    """The set does not take this message (too large, bad reason or delay): keep a countdown."""


@dataclass(frozen=True, slots=True)
class ParkedEntry:
    """One parked task message.

    ``message`` is the JSON text of the signature to publish (empty in listings, which do
    not load messages); ``due`` and ``parked_at`` are Redis server times; ``claims`` counts
    how often a releaser claimed it (more than 1: a releaser died or failed to publish).
    """

    id: str
    task_name: str
    task_id: str
    reason: ParkReason
    due: float
    parked_at: float
    message: str
    claims: int = 0
    #: The breaker whose opening made the task wait (it goes when the breaker lets it).
    breaker: str | None = None


@dataclass(frozen=True, slots=True)
class ParkedSummary:
    """Counts of the parked set, on the server's clock."""

    count: int
    by_reason: dict[str, int] = field(default_factory=dict)
    claimed: int = 0
    #: claims whose lease ran out (their releaser died): due again
    expired_claims: int = 0
    #: the earliest due time of a waiting entry (None when none waits)
    oldest_due: float | None = None
    now: float = 0.0

    @property
    def oldest_due_in(self) -> float | None:
        """Seconds until the earliest waiting entry is due (negative: overdue)."""
        return None if self.oldest_due is None else self.oldest_due - self.now


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _now(seconds: object, micros: object) -> float:
    return int(_text(seconds)) + int(_text(micros)) / 1_000_000


def _reason(value: object) -> ParkReason:
    for reason in PARK_REASONS:
        if value == reason:
            return reason
    return "schedule"


def _entry(
    entry_id: object, meta_raw: object, message: str, claims: int, due: float | None
) -> ParkedEntry:
    meta: dict[str, Any] = json.loads(_text(meta_raw))
    return ParkedEntry(
        id=_text(entry_id),
        task_name=str(meta.get("task_name", "?")),
        task_id=str(meta.get("task_id", "?")),
        reason=_reason(meta.get("reason")),
        due=float(meta.get("due", 0.0)) if due is None else due,
        parked_at=float(meta.get("parked_at", 0.0)),
        message=message,
        claims=claims,
        breaker=str(meta["breaker"]) if isinstance(meta.get("breaker"), str) else None,
    )


class ParkedSet:
    """The parked set of one key prefix, in one Redis (see the module docstring)::

    parked = ParkedSet(client, KeySpace("resilience"))
    entry = parked.park(task_name="shop.charge", task_id=tid, reason="backoff",
                        delay=90.0, message=message)
    for entry in parked.claim_due(limit=100, lease=30.0):   # in the releaser
        publish(entry)
        parked.done(entry.id)
    """

    def __init__(self, client: Client, keys: KeySpace) -> None:
        self.client = client
        self.keyspace = keys
        self.keys = keys.parked()
        self._scripts = ScriptBook(client, PARKED_SCRIPT_NAMES)

    def park(
        self,
        *,
        task_name: str,
        task_id: str,
        reason: ParkReason,
        delay: float,
        message: str,
        breaker: str | None = None,
    ) -> ParkedEntry:
        """Park ``message`` until ``delay`` seconds from now (server time); returns the entry.

        Raises :class:`ParkRefusedError` for a message above :data:`MAX_MESSAGE_BYTES`, an
        unknown reason, a delay that is not a finite number >= 0, or a task name or ID
        longer than 1024 characters; store errors propagate (``STORE_ERRORS``).
        """
        if reason not in PARK_REASONS:
            raise ParkRefusedError(f"unknown park reason {reason!r}; one of {PARK_REASONS}")
        if (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not (math.isfinite(delay) and delay >= 0)
        ):
            raise ParkRefusedError(f"the delay must be a finite number >= 0, got {delay!r}")
        if len(task_name) > _MAX_NAME or len(task_id) > _MAX_NAME:
            raise ParkRefusedError(f"task name or ID longer than {_MAX_NAME} characters")
        size = len(message.encode("utf-8"))
        if size > MAX_MESSAGE_BYTES:
            raise ParkRefusedError(
                f"message of {size} bytes is above the parked set's {MAX_MESSAGE_BYTES}"
            )
        entry_id = uuid.uuid4().hex
        fields = {"task_name": task_name, "task_id": task_id, "reason": reason}
        if breaker is not None:
            fields["breaker"] = breaker
        meta = json.dumps(fields)
        raw = self._scripts["parked_add"](
            keys=self.keys.all(), args=[entry_id, meta, message, repr(float(delay)), size]
        )
        res: dict[str, Any] = json.loads(raw)
        if res["err"]:
            raise ParkRefusedError(f"the parked set refused the entry ({res['err']})")
        seconds, micros = res["now"]
        return ParkedEntry(
            id=entry_id,
            task_name=task_name,
            task_id=task_id,
            reason=reason,
            due=float(res["due"]),
            parked_at=_now(seconds, micros),
            message=message,
            breaker=breaker,
        )

    def claim_due(self, *, limit: int, lease: float) -> list[ParkedEntry]:
        """Claim up to ``limit`` due entries (claims whose lease ran out first) for
        ``lease`` seconds; publish each, then call :meth:`done`."""
        if limit < 1:
            return []
        raw = self._scripts["parked_claim"](keys=self.keys.all(), args=[limit, repr(lease)])
        out: list[ParkedEntry] = []
        for i in range(2, len(raw) - 3, 4):
            out.append(_entry(raw[i], raw[i + 1], _text(raw[i + 2]), int(raw[i + 3]), None))
        return out

    def postpone(self, delays: dict[str, float]) -> int:
        """Put claimed entries back, due ``delays[id]`` seconds from now (server time),
        unpublished; how many were still claimed and went back."""
        args: list[str] = []
        for entry_id, delay in delays.items():
            args.extend((entry_id, repr(float(delay))))
        if not args:
            return 0
        return int(self._scripts["parked_postpone"](keys=self.keys.all(), args=args))

    def done(self, entry_id: str) -> bool:
        """Forget an entry once its message was published; False when it was gone already."""
        return self.drop([entry_id]) == 1

    def drop(self, ids: Iterable[str]) -> int:
        """Forget these entries (published, or an operator's choice); how many there were."""
        removed = 0
        batch: list[str] = []
        for entry_id in ids:
            batch.append(entry_id)
            if len(batch) == _BATCH:
                removed += int(self._scripts["parked_done"](keys=self.keys.all(), args=batch))
                batch = []
        if batch:
            removed += int(self._scripts["parked_done"](keys=self.keys.all(), args=batch))
        return removed

    def release_now(
        self,
        *,
        ids: Iterable[str] | None = None,
        reason: str | None = None,
        task_name: str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Make the matching waiting entries due now; returns how many (would) move.

        ``ids``: exactly these; else every waiting entry whose ``reason`` and ``task_name``
        match those given (all of them when neither is). Walks the due set with ``ZSCAN``
        (which returns every entry present from start to end, however their due times
        move meanwhile) in batches of 500, each checked and moved by one script call.
        """
        if ids is not None:
            return self._release(dict.fromkeys(ids), dry_run)
        moved = 0
        seen: set[str] = set()
        batch: list[str] = []
        for member, _score in self.client.zscan_iter(self.keys.due, count=_BATCH):
            entry_id = _text(member)
            if entry_id in seen:
                continue  # ZSCAN may return a member twice
            seen.add(entry_id)
            batch.append(entry_id)
            if len(batch) == _BATCH:
                moved += self._release(self._matching(batch, reason, task_name), dry_run)
                batch = []
        if batch:
            moved += self._release(self._matching(batch, reason, task_name), dry_run)
        return moved

    def _matching(self, ids: list[str], reason: str | None, task_name: str | None) -> list[str]:
        if reason is None and task_name is None:
            return ids
        metas = self.client.hmget(self.keys.meta, ids)
        out = []
        for entry_id, raw in zip(ids, metas, strict=True):
            if raw is None:
                continue
            meta = json.loads(_text(raw))
            if (reason is None or meta.get("reason") == reason) and (
                task_name is None or meta.get("task_name") == task_name
            ):
                out.append(entry_id)
        return out

    def _release(self, ids: Iterable[str], dry_run: bool) -> int:
        moved = 0
        batch: list[str] = []
        for entry_id in ids:
            batch.append(entry_id)
            if len(batch) == _BATCH:
                moved += self._release_batch(batch, dry_run)
                batch = []
        if batch:
            moved += self._release_batch(batch, dry_run)
        return moved

    def _release_batch(self, batch: list[str], dry_run: bool) -> int:
        flag = "1" if dry_run else "0"
        return int(self._scripts["parked_release"](keys=[self.keys.due], args=[flag, *batch]))

    def summary(self) -> ParkedSummary:
        """Count, by reason, claimed, claims expired, and the earliest due time."""
        raw = self._scripts["parked_summary"](
            keys=[self.keys.due, self.keys.claimed, self.keys.counts]
        )
        res: dict[str, Any] = json.loads(raw)
        flat = res["counts"] if isinstance(res["counts"], list) else []
        by_reason = {
            str(flat[i]): int(flat[i + 1])
            for i in range(0, len(flat) - 1, 2)
            if int(flat[i + 1]) > 0
        }
        seconds, micros = res["now"]
        return ParkedSummary(
            count=int(res["waiting"]) + int(res["claimed"]),
            by_reason=by_reason,
            claimed=int(res["claimed"]),
            expired_claims=int(res["expired"]),
            oldest_due=float(res["oldest"]) if res["oldest"] else None,
            now=_now(seconds, micros),
        )

    def entries(
        self, *, limit: int = 100, reason: str | None = None, task_name: str | None = None
    ) -> list[ParkedEntry]:
        """Waiting entries, earliest due first, up to ``limit``, without their messages
        (claimed ones are being published and are not listed); filtered by ``reason`` and
        ``task_name`` when given."""
        out: list[ParkedEntry] = []
        for page in self._pages(reason=reason, task_name=task_name, limit=limit):
            out.extend(page[: limit - len(out)])
            if len(out) >= limit:
                break
        return out

    def _pages(
        self, *, reason: str | None, task_name: str | None, limit: int
    ) -> Iterable[list[ParkedEntry]]:
        """Matching waiting entries, one page (one script call) at a time, by rank.

        A page is read atomically; between pages the set may change (an entry released or
        due meanwhile can be skipped or seen twice): a listing, not a snapshot.
        """
        start = 0
        size = _BATCH if reason or task_name else min(limit, _BATCH)
        while True:
            raw = self._scripts["parked_list"](
                keys=[self.keys.due, self.keys.meta, self.keys.claims], args=[start, size]
            )
            page: list[ParkedEntry] = []
            count = (len(raw) - 2) // 4
            for i in range(2, 2 + 4 * count, 4):
                if not raw[i + 2]:
                    continue
                entry = _entry(raw[i], raw[i + 2], "", int(raw[i + 3]), float(_text(raw[i + 1])))
                if (reason is None or entry.reason == reason) and (
                    task_name is None or entry.task_name == task_name
                ):
                    page.append(entry)
            if page:
                yield page
            if count < size:
                return
            start += size

    def first_delivery(self, entry_id: str, *, ttl: float = 3600.0) -> bool:
        """Mark a released entry as delivered (one ``SET NX``); False for a second copy.

        The attempt path calls it with the ``resilience_parked`` header of a message: when a
        releaser's lease ran out while it was publishing, the entry was published twice,
        and only the first copy may run. ``ttl`` must outlive the claim lease.
        """
        key = self.keyspace.parked_delivery(entry_id)
        return bool(self.client.set(key, "1", nx=True, px=max(1, int(ttl * 1000))))


def reports_persistence(client: Client) -> bool:
    """True when the Redis behind ``client`` writes an append-only file (``INFO
    persistence``: ``aof_enabled:1``), on every primary of a Cluster.

    RDB snapshots alone are not enough: a parked message exists nowhere else (its original
    was acknowledged), and a snapshot taken every few minutes loses every task parked since
    the last one when the server restarts. A server that hides ``INFO`` counts as not
    persistent.
    """
    try:
        info: Any = client.info("persistence")
    except ResponseError:
        return False
    if isinstance(info, dict) and "aof_enabled" in info:
        return int(info["aof_enabled"]) == 1
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        return all(int(v.get("aof_enabled", 0)) == 1 for v in info.values())
    return False
