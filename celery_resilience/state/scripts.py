"""Load the Lua scripts from the package, expanding ``--!include`` lines."""

from __future__ import annotations

import threading
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.commands.core import Script

__all__ = ["PARKED_SCRIPT_NAMES", "SCRIPT_NAMES", "ScriptBook", "script_source"]

SCRIPT_NAMES = (
    "gate",
    "record",
    "attempt_lost",
    "breaker_admin",
    "limiter_status",
    "keys_status",
    "policy_set",
)
#: The parked set's scripts (registered by :class:`celery_resilience.state.parked.ParkedSet`).
PARKED_SCRIPT_NAMES = (
    "parked_add",
    "parked_claim",
    "parked_done",
    "parked_postpone",
    "parked_release",
    "parked_summary",
    "parked_list",
)
_INCLUDE = "--!include "


@cache
def script_source(name: str) -> str:
    """The full text of one operation script, its includes expanded."""
    if name not in SCRIPT_NAMES and name not in PARKED_SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    return _expand(f"{name}.lua")


def _expand(filename: str) -> str:
    text = files("celery_resilience.state").joinpath("lua").joinpath(filename).read_text("utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith(_INCLUDE):
            lines.append(_expand(line[len(_INCLUDE) :].strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class ScriptBook:
    """The scripts of one client, registered on first use (registering reads the client's
    encoder, which a Cluster client that is not built yet would have to build)."""

    def __init__(self, client: Any, names: Iterable[str]) -> None:
        self._client = client
        self._names = frozenset(names)
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Script:
        found = self._scripts.get(name)
        if found is None:
            if name not in self._names:
                raise KeyError(f"no Lua script named {name!r} here")
            with self._lock:
                found = self._scripts.get(name)
                if found is None:
                    found = self._scripts[name] = self._client.register_script(script_source(name))
        return found
