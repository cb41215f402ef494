"""Per-key limits: from a task's arguments to the text that names one key's shared state.

A :class:`~celery_resilience.core.limits.CircuitBreaker`, ``RateLimit`` or
``ConcurrencyLimit`` declared with ``key=`` gets one shared state per key: the key
function is called with the task's ``(args, kwargs)``; its result becomes text (a ``str``
as is, ``bytes`` decoded with ``backslashreplace``, anything else through ``str()``), is
escaped with :func:`escape` (only ``[A-Za-z0-9._-]`` and ``%XX`` remain), and, when that is
longer than :data:`MAX_KEY_CHARS`, is replaced by ``~`` and its BLAKE2b digest. The result
can name nothing but this one key: ``~`` never survives escaping.

>>> key_text(lambda args, kwargs: kwargs["tenant"], (), {"tenant": "acme corp"})
'acme%20corp'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "IDLE_TTL",
    "KEY_RE",
    "MAX_KEY_CHARS",
    "OVERFLOW",
    "KeyFunction",
    "KeyFunctionError",
    "as_text",
    "bounded",
    "escape",
    "key_text",
    "shown",
    "unescape",
]

#: What a key function is: ``(args, kwargs) -> anything``.
KeyFunction = Callable[[tuple[Any, ...], dict[str, Any]], object]
#: The longest escaped key kept as it is; longer ones become ``~`` + a 32-digit digest.
MAX_KEY_CHARS = 64
#: What :func:`bounded` returns: escaped text, or ``~`` and a digest.
KEY_RE = re.compile(r"~[0-9a-f]{32}|[A-Za-z0-9._%-]{0,64}")
#: The key reported for calls that shared their name's overflow state (no key is this).
OVERFLOW = "~overflow"
#: Seconds a key's shared state (and its place among a name's live keys) outlives its
#: last use.
IDLE_TTL = 600.0

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]*")


def escape(name: str) -> str:
    """Percent-encode everything but ``[A-Za-z0-9._-]``, so no name can forge a key.

    >>> escape("payments"), escape("a{b}:c d")
    ('payments', 'a%7Bb%7D%3Ac%20d')
    """
    if type(name) is str and _SAFE_NAME.fullmatch(name):
        return name  # the usual case: nothing to encode
    raw = name.encode("utf-8", "surrogatepass")  # a lone surrogate keeps its own bytes
    return "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in raw)


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


def as_text(value: object) -> str:
    """A key function's result as text: ``str`` as is, ``bytes`` decoded (undecodable
    bytes as ``\\xNN``), anything else through ``str()``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def bounded(text: str) -> str:
    """``text`` escaped, or ``~`` + its BLAKE2b digest (16 bytes, hex) when the escaped
    form is longer than :data:`MAX_KEY_CHARS`.

    >>> bounded("tenant-1"), len(bounded("x" * 65))
    ('tenant-1', 33)
    """
    escaped = escape(text)
    if len(escaped) <= MAX_KEY_CHARS:
        return escaped
    return "~" + hashlib.blake2b(escaped.encode("ascii"), digest_size=16).hexdigest()


def key_text(function: KeyFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key of one call: ``function(args, kwargs)`` as bounded, escaped text. Whatever
    the function raises propagates (the caller gives the attempt up)."""
    return bounded(as_text(function(args, kwargs)))


class KeyFunctionError(Exception):
    """A key function raised: which policy's, and what it raised."""

    def __init__(self, kind: str, name: str, error: BaseException) -> None:
        super().__init__(kind, name, type(error).__name__)
        self.kind, self.name, self.error = kind, name, error

    def __str__(self) -> str:
        return (
            f"the key function of {self.kind} {self.name!r} raised "
            f"{type(self.error).__name__}: the attempt gives up"
        )


def shown(name: str, key: str | None) -> str:
    """How logs and the CLI name one key's state: ``name[key]`` (the key is escaped)."""
    return name if key is None else f"{name}[{key}]"
