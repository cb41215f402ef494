"""Redis key names. Every name from code or task input is escaped before it is used.

All keys of one breaker (and of one limiter, one concurrency limit, one task's attempt
leases) share a hash tag, so that each group lives in one Redis Cluster slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from celery_resilience.core.keying import KEY_RE, OVERFLOW, escape, unescape

__all__ = ["DEFAULT_PREFIX", "KeySpace", "ParkedKeys", "escape", "unescape"]

DEFAULT_PREFIX = "resilience"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ParkedKeys:
    """The keys of the parked set, all in one Redis Cluster slot (one hash tag)."""

    #: sorted set: entry id -> due time (waiting entries)
    due: str
    #: sorted set: entry id -> lease expiry (entries a releaser is publishing)
    claimed: str
    #: hash: entry id -> JSON {task_name, task_id, reason, due, parked_at}
    meta: str
    #: hash: entry id -> the message (JSON text)
    messages: str
    #: hash: reason -> how many entries (waiting or claimed) were parked for it
    counts: str
    #: hash: entry id -> how many times it was claimed
    claims: str

    def all(self) -> list[str]:
        """Every key, in the order the scripts name them."""
        return [self.due, self.claimed, self.meta, self.messages, self.counts, self.claims]


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds every key under one prefix (the ``resilience_key_prefix`` setting)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"resilience_key_prefix must be 1-64 characters of [A-Za-z0-9._:-], "
                f"got {self.prefix!r}"
            )

    def breaker(self, name: str, key: str | None = None) -> tuple[str, str, str]:
        """State hash, window hash, probes sorted set (of one key: see :meth:`keyed`)."""
        base = self.keyed("breaker", name, key)
        return f"{base}:state", f"{base}:window", f"{base}:probes"

    def limiter(self, name: str, key: str | None = None) -> str:
        """The rate limiter's hash (theoretical arrival time, pause)."""
        return self.keyed("limiter", name, key)

    def concurrency(self, name: str, key: str | None = None) -> str:
        """The concurrency limit's sorted set of slot leases."""
        return self.keyed("concurrency", name, key)

    def keyed(self, kind: str, name: str, key: str | None) -> str:
        """The base of the state of ``name`` (``key`` None), of one of its keys, or of its
        overflow state (``key`` :data:`OVERFLOW`). Keyed state shares the name's hash tag
        and adds ``:key:<key>`` after it, where an unkeyed name has nothing or ``:state``
        (the key is escaped text, see :mod:`celery_resilience.core.keying`): no key of
        one name can be mistaken for another name or another key."""
        base = f"{self.prefix}:{kind}:{{{escape(name)}}}"
        if key is None:
            return base
        if key == OVERFLOW:
            return f"{base}:overflow"
        if not KEY_RE.fullmatch(key):
            raise ValueError(f"not an escaped key: {key!r}")
        return f"{base}:key:{key}"

    def registry(self, kind: str, name: str) -> tuple[str, str]:
        """The live keys of a keyed ``name`` (sorted set: key -> last use) and their use
        counts (hash: key -> uses; ``~overflow`` -> uses of the overflow state)."""
        base = f"{self.prefix}:{kind}:{{{escape(name)}}}"
        return f"{base}:keys", f"{base}:uses"

    def attempt(self, task_id: str, attempt: int, nonce: str = "-") -> str:
        """The lease of one attempt of one publication of one task (``nonce`` tells two
        publications under one task ID apart, e.g. ``Task.replace``)."""
        return f"{self.prefix}:attempt:{{{escape(task_id)}}}:{escape(nonce)}:{attempt}"

    def policies(self) -> str:
        """The hash of run-time policy overrides."""
        return f"{self.prefix}:policies"

    def dead_letters(self) -> str:
        """The dead-letter stream."""
        return f"{self.prefix}:dead-letters"

    def parked(self) -> ParkedKeys:
        """The parked set's keys (hash tag: the prefix, so each prefix has its own slot)."""
        base = f"{self.prefix}:parked:{{{self.prefix}}}"
        return ParkedKeys(
            due=f"{base}:due",
            claimed=f"{base}:claimed",
            meta=f"{base}:meta",
            messages=f"{base}:messages",
            counts=f"{base}:counts",
            claims=f"{base}:claims",
        )

    def parked_delivery(self, entry_id: str) -> str:
        """The mark of the first delivery of a released entry (against a double release)."""
        return f"{self.prefix}:parked-delivery:{{{escape(entry_id)}}}"

    def pattern(self, kind: str) -> str:
        """A SCAN pattern for every key of one kind ("breaker", "limiter", ...)."""
        return f"{self.prefix}:{kind}:{{*}}*"

    def name_of(self, key: str, kind: str) -> str | None:
        """The escaped name inside a key of ``kind``, or None if the key is not one."""
        head = f"{self.prefix}:{kind}:{{"
        if not key.startswith(head):
            return None
        end = key.find("}", len(head))
        return None if end < 0 else unescape(key[len(head) : end])
