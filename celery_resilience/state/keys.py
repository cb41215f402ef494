"""Redis key names. Every name from code or task input is escaped before it is used.

All keys of one breaker (and of one limiter, one concurrency limit, one task's attempt
leases) share a hash tag, so that each group lives in one Redis Cluster slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "KeySpace", "ParkedKeys", "escape"]

DEFAULT_PREFIX = "resilience"
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]*")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def escape(name: str) -> str:
    """Percent-encode everything but ``[A-Za-z0-9._-]``, so no name can forge a key.

    >>> escape("payments"), escape("a{b}:c d")
    ('payments', 'a%7Bb%7D%3Ac%20d')
    """
    if type(name) is str and _SAFE_NAME.fullmatch(name):
        return name  # the usual case: nothing to encode
    return "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in name.encode("utf-8"))


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

    def breaker(self, name: str) -> tuple[str, str, str]:
        """State hash, window hash, probes sorted set."""
        base = f"{self.prefix}:breaker:{{{escape(name)}}}"
        return f"{base}:state", f"{base}:window", f"{base}:probes"

    def limiter(self, name: str) -> str:
        """The rate limiter's hash (theoretical arrival time, pause)."""
        return f"{self.prefix}:limiter:{{{escape(name)}}}"

    def concurrency(self, name: str) -> str:
        """The concurrency limit's sorted set of slot leases."""
        return f"{self.prefix}:concurrency:{{{escape(name)}}}"

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


def unescape(escaped: str) -> str:
    """Undo :func:`escape`."""
    out = bytearray()
    i = 0
    while i < len(escaped):
        if escaped[i] == "%" and i + 3 <= len(escaped):
            out.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            out += escaped[i].encode("utf-8")
            i += 1
    return out.decode("utf-8", errors="replace")
