"""Named policies at run time: the configured table, plus overrides read from Redis.

Per app and per process, a :class:`PolicyBook` holds the checked configuration table and
the last overrides it read. It reads Redis again at most once a second (one round trip for
every policy at once), logs each change once with the old and new values, and keeps the
last known overrides while Redis cannot be reached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery_resilience.core import clock
from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.core.options import TaskOptions
from celery_resilience.core.policies import merge, parse_policy, parse_table
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.overrides import Override, Overrides

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["REFRESH_EVERY", "PolicyBook", "config_book", "configured_policies", "resolve"]

logger = logging.getLogger("celery_resilience.core.policies")

#: Seconds between two reads of the overrides by one process.
REFRESH_EVERY = 1.0
#: Policy keys and the task options they set.
_OPTION_OF = {"rate_limit": "limiter"}
#: Resolved options kept at most (policies x task classes in one process).
_RESOLVED_MAX = 1_024
#: Options holding a policy object whose fields an override may change one by one.
_OBJECTS = frozenset({"breaker", "limiter", "concurrency"})


def configured_policies(app: Celery) -> dict[str, dict[str, Any]]:
    """The ``resilience_policies`` table of ``app``, as written (checked: ValueError)."""
    table = app.conf.get("resilience_policies") or {}
    parse_table(table)
    return {name: dict(raw) for name, raw in table.items()}


def resolve(
    own: TaskOptions,
    explicit: frozenset[str],
    config: dict[str, Any],
    override: Override,
    name: str,
) -> TaskOptions:
    """The options of one attempt of a task naming policy ``name``.

    From weakest to strongest: the task's defaults, the configured policy, the task's
    own explicit options, the run-time overrides (the operator's word wins).
    """
    configured = parse_policy(name, config)
    changes: dict[str, Any] = {k: v for k, v in configured.items() if k not in explicit}
    if override.values:
        overridden = parse_policy(name, merge(config, override.values))
        for key, value in override.values.items():
            option = _OPTION_OF.get(key, key)
            mine = getattr(own, option) if option in explicit else None
            if isinstance(value, Mapping) and mine is not None and option in _OBJECTS:
                # a field of the task's own breaker (limiter, pool): change that field of
                # that object, which keeps its name and its other fields
                changes[option] = _changed(name, key, mine, value)
            else:
                changes[option] = overridden[option]
    return replace(own, **changes)


def _changed(policy: str, key: str, mine: Any, fields: Mapping[str, Any]) -> Any:
    try:
        return replace(mine, **fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"resilience policy {policy!r}: {key}: {exc}") from None


class PolicyBook:
    """The named policies of one app in one process."""

    def __init__(
        self,
        app: Celery,
        overrides: Overrides | None,
        reachable: Callable[[], bool] | None = None,
    ) -> None:
        self.config = configured_policies(app)
        self.overrides = overrides
        self._reachable = reachable
        self._current: dict[str, Override] = {}
        #: resolved options by (policy, the task's own options, override version and
        #: time): a policy is resolved again only when its overrides change
        self._resolved: dict[tuple[str, int, int, float], tuple[TaskOptions, TaskOptions]] = {}
        self._read = False
        self._next_read = 0.0
        self._lock = threading.Lock()

    def config_of(self, name: str) -> dict[str, Any]:
        """The configured policy ``name``; ResilienceConfigError when there is none."""
        try:
            return self.config[name]
        except KeyError:
            known = ", ".join(sorted(self.config)) or "none"
            raise ResilienceConfigError(
                f"no resilience policy named {name!r} in resilience_policies (known: {known})"
            ) from None

    def override_of(self, name: str) -> Override:
        """The overrides of ``name`` in force (read again if a second has passed)."""
        self._refresh()
        return self._current.get(name, Override())

    def options(self, name: str, own: TaskOptions, explicit: frozenset[str]) -> TaskOptions:
        """The options of one attempt of a task that names policy ``name``."""
        config = self.config_of(name)
        override = self.override_of(name)
        key = (name, id(own), override.version, override.at)
        found = self._resolved.get(key)
        if found is not None and found[0] is own:
            return found[1]
        try:
            resolved = resolve(own, explicit, config, override, name)
        except ValueError as exc:
            logger.error(  # noqa: TRY400 - the message says all
                "celery-resilience: the overrides of policy %r (version %d) do not apply "
                "(%s); using the configured policy",
                name,
                override.version,
                exc,
            )
            return resolve(own, explicit, config, Override(), name)
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        self._resolved[key] = (own, resolved)
        return resolved

    def _refresh(self) -> None:
        if self.overrides is None or (self._reachable is not None and not self._reachable()):
            return  # Redis is known down: the last known overrides stay in force
        now = clock.monotonic()
        if now < self._next_read:
            return
        with self._lock:
            if now < self._next_read:
                return
            self._next_read = now + REFRESH_EVERY
            try:
                fresh = self.overrides.all()
            except STORE_ERRORS:
                return  # the last known overrides stay in force
            level = logging.WARNING if self._read else logging.INFO
            self._read = True
            for name in sorted(set(fresh) | set(self._current)):
                old = self._current.get(name, Override())
                new = fresh.get(name, Override())
                if new.version != old.version:
                    logger.log(
                        level,
                        "celery-resilience: policy %r is now version %d: overrides %s "
                        "(were %s, version %d)",
                        name,
                        new.version,
                        new.values or "none",
                        old.values or "none",
                        old.version,
                    )
            self._current = fresh


_config_books: dict[int, tuple[object, PolicyBook]] = {}


def config_book(app: Celery) -> PolicyBook:
    """A book of the configured policies only (eager mode, checks): no Redis."""
    table = app.conf.get("resilience_policies")
    found = _config_books.get(id(app))
    if found is None or found[0] is not table:
        found = _config_books[id(app)] = (table, PolicyBook(app, None))
    return found[1]
