"""What the ``resilience`` commands share: the state store, errors, tables, times.

Every failure ends as a :class:`CommandError`: one line on stderr, a non-zero exit code,
no traceback.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import click

from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.integration.parking import ParkingPlace, parking_place
from celery_resilience.integration.settings import read_settings
from celery_resilience.observability.tracing import safe_text
from celery_resilience.state.connect import connect, describe
from celery_resilience.state.deadletters import DeadLetters
from celery_resilience.state.errors import STORE_ERRORS
from celery_resilience.state.redis import RedisStore

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from celery import Celery

__all__ = [
    "EX_CONFIG",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "CommandError",
    "Session",
    "session",
    "short",
    "table",
    "utc",
    "when",
]

EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_CONFIG = 78


class CommandError(click.ClickException):
    """A command failed: printed as one line (``Error: ...``) with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code  # type: ignore[misc]


def short(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception, on one line, log-safe and bounded."""
    return safe_text(f"{type(exc).__name__}: {' '.join(str(exc).split())}", limit)


class Session:
    """The app, its settings and its state store, for one command."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        try:
            self.settings = read_settings(app)
        except ResilienceConfigError as exc:
            raise CommandError(str(exc), EX_CONFIG) from None
        self.where = "the state store"
        with self.talking():
            try:
                client = connect(
                    self.settings.backend_url,
                    timeout=self.settings.redis_timeout,
                    ssl=self.settings.ssl,
                )
            except ValueError as exc:
                raise CommandError(f"resilience_backend_url: {exc}", EX_CONFIG) from None
            self.where = describe(client)
        self.client = client
        self.store = RedisStore(self.client, self.settings.keys)
        self.letters = DeadLetters(self.client, self.settings.keys, self.settings.dead_letters_max)
        self._parking: ParkingPlace | None = None

    def parking(self) -> ParkingPlace:
        """Where the app's tasks are parked (the Redis broker, or the state store)."""
        if self._parking is None:
            with self.talking():
                try:
                    self._parking = parking_place(self.app)
                except ValueError as exc:
                    raise CommandError(f"parked set: {exc}", EX_CONFIG) from None
        return self._parking

    @property
    def prefix(self) -> str:
        """The key prefix (``resilience_key_prefix``)."""
        return self.settings.keys.prefix

    @contextlib.contextmanager
    def talking(self) -> Iterator[None]:
        """Turn state-store errors into one-line command errors (exit 69)."""
        try:
            yield
        except STORE_ERRORS as exc:
            raise CommandError(
                f"state store {self.where} unreachable ({short(exc)})", EX_UNAVAILABLE
            ) from None

    def now(self) -> float:
        """The store's clock."""
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1e6


def session(ctx: click.Context) -> Session:
    """The command's session, made once per invocation from Celery's ``ctx.obj.app``."""
    found = ctx.meta.get("celery_resilience.session")
    if found is None:
        app = getattr(ctx.obj, "app", None)
        if app is None:
            raise CommandError("run it as `celery -A proj resilience ...`", EX_USAGE)
        found = Session(app)
        ctx.meta["celery_resilience.session"] = found
        ctx.call_on_close(found.client.close)
    return found


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under a header line, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def utc(epoch: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` UTC ("-" for none)."""
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"


def when(epoch: float | None, now: float) -> str:
    """An epoch time relative to ``now``: ``in 4.2 s``, ``3.0 s ago`` ("-" for none)."""
    if not epoch:
        return "-"
    delta = epoch - now
    return f"in {delta:.1f} s" if delta >= 0 else f"{-delta:.1f} s ago"
