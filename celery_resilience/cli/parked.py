"""``celery -A proj resilience parked ...``: list the parked tasks, push them on.

::

    celery -A proj resilience parked list [--reason R] [--task-name N] [--limit N] [--json]
    celery -A proj resilience parked release (--all | --id ID ... | --task-name N | --reason R)
                                             [--dry-run]

``release`` makes the matching waiting entries due now: the next look of a worker's
releaser (about a second) publishes them. Nothing is deleted here.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

from celery_resilience.cli.kit import EX_USAGE, CommandError, session, table, utc, when
from celery_resilience.observability.stats_rows import due_words
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.parked import PARK_REASONS

if TYPE_CHECKING:
    from celery_resilience.cli.kit import Session
    from celery_resilience.state.parked import ParkedEntry, ParkedSummary

__all__ = ["parked", "parked_status", "render_parked"]

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def parked_status(s: Session) -> dict[str, Any]:
    """The ``parked`` object of ``status --json``."""
    place = s.parking()
    with s.talking():
        summary: ParkedSummary = place.parked.summary()
    due_in = summary.oldest_due_in
    return {
        "count": summary.count,
        "by_reason": dict(sorted(summary.by_reason.items())),
        "claimed": summary.claimed,
        "expired_claims": summary.expired_claims,
        "oldest_due_in": None if due_in is None else round(due_in, 3),
        "store": place.where,
        "parking": "on" if place.durable and s.settings.park_after > 0 else "off",
        "park_after": s.settings.park_after,
        "why": place.why,
    }


def render_parked(data: dict[str, Any]) -> str:
    """One line about the parked set, for the status table."""
    reasons = ", ".join(f"{k} {v}" for k, v in data["by_reason"].items())
    oldest = due_words(data["oldest_due_in"])
    return (
        f"Parked: {data['count']}{f' ({reasons})' if reasons else ''}, "
        f"{data['claimed']} claimed, {oldest}; parking {data['parking']} "
        f"(in {data['store']})"
    )


def _as_json(entry: ParkedEntry, now: float) -> dict[str, Any]:
    return {
        "id": entry.id,
        "task_name": entry.task_name,
        "task_id": entry.task_id,
        "reason": entry.reason,
        "due": entry.due,
        "due_in": round(entry.due - now, 3),
        "parked_at": entry.parked_at,
        "claims": entry.claims,
    }


@click.group(name="parked")
def parked() -> None:
    """Tasks parked outside the workers until they are due."""


_REASON = click.Choice(list(PARK_REASONS))


@parked.command(name="list")
@click.option("--reason", type=_REASON, default=None, help="Only those parked for this reason.")
@click.option("--task-name", default=None, help="Only those of this task.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="How many, earliest due first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_context
def list_parked(
    ctx: click.Context, reason: str | None, task_name: str | None, limit: int, as_json: bool
) -> None:
    """Waiting parked tasks, earliest due first (those being published are not listed)."""
    s = session(ctx)
    place = s.parking()
    with s.talking():
        entries = place.parked.entries(limit=limit, reason=reason, task_name=task_name)
        summary = place.parked.summary()
    if as_json:
        out = [_as_json(e, summary.now) for e in entries]
        click.echo(json.dumps(out, indent=2, ensure_ascii=True))
        return
    if not entries:
        click.echo("no parked tasks" + (" match" if reason or task_name else ""))
        return
    rows = [
        [
            e.id,
            when(e.due, summary.now),
            e.reason,
            safe_token(e.task_name, 60),
            safe_token(e.task_id, 40),
            utc(e.parked_at),
            str(e.claims),
        ]
        for e in entries
    ]
    click.echo(table(["ID", "DUE", "REASON", "TASK", "TASK ID", "PARKED AT", "CLAIMS"], rows))
    waiting = summary.count - summary.claimed
    if waiting > len(entries) and not (reason or task_name):
        click.echo(f"({len(entries)} of {waiting}; --limit for more)")


@parked.command()
@click.option("--all", "everything", is_flag=True, help="Every waiting parked task.")
@click.option("--id", "ids", multiple=True, metavar="ID", help="This entry (repeat for more).")
@click.option("--task-name", default=None, help="Those of this task.")
@click.option("--reason", type=_REASON, default=None, help="Those parked for this reason.")
@click.option("--dry-run", is_flag=True, help="Only count them.")
@click.pass_context
def release(
    ctx: click.Context,
    *,
    everything: bool,
    ids: tuple[str, ...],
    task_name: str | None,
    reason: str | None,
    dry_run: bool,
) -> None:
    """Make parked tasks due now (a worker publishes them within about a second).

    Choose them with --all, with --id, or with --task-name and/or --reason.
    """
    filtered = task_name is not None or reason is not None
    if sum([everything, bool(ids), filtered]) != 1:
        raise CommandError(
            "choose the parked tasks with one of --all, --id, or --task-name/--reason", EX_USAGE
        )
    for entry_id in ids:
        if not _ID_RE.match(entry_id):
            raise CommandError(
                f"{safe_token(entry_id)!r} is not a parked entry ID (32 hex digits)", EX_USAGE
            )
    s = session(ctx)
    place = s.parking()
    with s.talking():
        count = place.parked.release_now(
            ids=list(ids) if ids else None, reason=reason, task_name=task_name, dry_run=dry_run
        )
    noun = "parked task" if count == 1 else "parked tasks"
    if dry_run:
        click.echo(f"would release {count} {noun}")
    else:
        click.echo(f"released {count} {noun}")
