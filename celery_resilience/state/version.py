"""The oldest Redis the state store runs on, and the check a worker makes at start.

Redis 6.2 or newer (or a server that reports such a ``redis_version``, like Valkey): the
scripts read the server clock (``TIME``) and then write, which needs the effects
replication of Redis 5+; dead letters are a stream, trimmed by age with ``XTRIM MINID``
and read in pages with exclusive ``XRANGE`` bounds, both Redis 6.2.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_resilience.state.connect import Client

__all__ = ["MIN_REDIS_VERSION", "parse_version", "server_version", "version_problem"]

#: The oldest Redis version the state store supports.
MIN_REDIS_VERSION = (6, 2)
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: object) -> tuple[int, ...] | None:
    """``"7.2.4"`` → ``(7, 2, 4)``; None for anything that is not a version.

    >>> parse_version("6.2.14"), parse_version("8.0"), parse_version("?")
    ((6, 2, 14), (8, 0), None)
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    match = _VERSION_RE.match(str(text).strip()) if text is not None else None
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def server_version(client: Client) -> tuple[int, ...] | None:
    """The Redis version the state store reports (the oldest node's, on a Cluster); None
    when no node says. Raises the client's errors when the store does not answer."""
    info: Any = client.info("server")
    found = []
    if isinstance(info, dict) and "redis_version" not in info:
        candidates = [node for node in info.values() if isinstance(node, dict)]  # per node
    else:
        candidates = [info]
    for node in candidates:
        version = parse_version(node.get("redis_version")) if isinstance(node, dict) else None
        if version is not None:
            found.append(version)
    return min(found) if found else None


def version_problem(version: tuple[int, ...] | None, where: str) -> str | None:
    """One line saying why ``version`` cannot serve as the state store, or None.

    >>> version_problem((5, 0, 7), "h:6379/0").split(";")[0]
    'the state store h:6379/0 runs Redis 5.0.7'
    >>> version_problem((6, 2, 0), "h:6379/0") is None
    True
    """
    if version is None or version >= MIN_REDIS_VERSION:
        return None
    shown = ".".join(map(str, version))
    needed = ".".join(map(str, MIN_REDIS_VERSION))
    return (
        f"the state store {where} runs Redis {shown}; celery-resilience needs Redis "
        f"{needed} or newer (its scripts read TIME before they write; dead letters use "
        "XTRIM MINID)"
    )
