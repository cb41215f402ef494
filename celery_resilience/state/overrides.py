"""Run-time overrides of named policies, in one Redis hash, versioned per policy.

Workers read the whole hash at most once a second (one round trip per process, whatever
the number of policies); an operator's change is a compare-and-set on the version, so two
changes never interleave, and an attempt always sees one whole version of a policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_resilience.state.keys import KeySpace
from celery_resilience.state.scripts import ScriptBook

if TYPE_CHECKING:
    from celery_resilience.state.connect import Client

__all__ = ["Override", "OverrideConflictError", "Overrides"]


@dataclass(frozen=True, slots=True)
class Override:
    """The overrides of one policy at one version."""

    version: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


class OverrideConflictError(RuntimeError):
    """The policy changed between reading and writing it."""


class Overrides:
    """The overrides hash in Redis."""

    def __init__(self, client: Client, keys: KeySpace) -> None:
        self.client = client
        self.key = keys.policies()
        self._scripts = ScriptBook(client, ("policy_set",))

    def all(self) -> dict[str, Override]:
        """Every policy's overrides (one round trip)."""
        raw = self.client.hgetall(self.key)
        out: dict[str, Override] = {}
        for name, text in raw.items():
            parsed = _parse(text)
            if parsed is not None:
                out[_text(name)] = parsed
        return out

    def get(self, name: str) -> Override:
        """One policy's overrides (version 0 and none when never set)."""
        parsed = _parse(self.client.hget(self.key, name))
        return parsed if parsed is not None else Override()

    def put(self, name: str, values: dict[str, Any], expected_version: int) -> int:
        """Store ``values`` as the policy's overrides if it is still at ``expected_version``."""
        script = self._scripts["policy_set"]
        version = int(script(keys=[self.key], args=[name, expected_version, json.dumps(values)]))
        if version < 0:
            raise OverrideConflictError(f"policy {name!r} changed meanwhile; read it again")
        return version


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(raw: object) -> Override | None:
    if raw is None:
        return None
    try:
        data = json.loads(_text(raw))
        return Override(int(data["v"]), dict(data["values"]), float(data.get("at", 0.0)))
    except (ValueError, KeyError, TypeError):
        return None
