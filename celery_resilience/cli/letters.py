"""``celery -A proj resilience dead-letters ...``: list, show, requeue, purge.

A letter is only ever deleted by ``purge`` or after a successful ``requeue``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click
from kombu.exceptions import OperationalError

from celery_resilience.cli.kit import (
    EX_UNAVAILABLE,
    EX_USAGE,
    CommandError,
    Session,
    session,
    short,
    table,
    utc,
)
from celery_resilience.core import headers as names
from celery_resilience.observability.tracing import (
    TraceContext,
    new_span_id,
    new_trace,
    safe_text,
    safe_token,
)

if TYPE_CHECKING:
    from celery import Celery

    from celery_resilience.state.deadletters import DeadLetter

__all__ = ["RequeueRefusedError", "dead_letters", "parse_duration", "requeue_letter"]

_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class RequeueRefusedError(ValueError):
    """A dead letter cannot be sent again as it is (its arguments are not JSON)."""


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"``, ``"1h30m"``.

    >>> parse_duration("1h30m"), parse_duration("7d")
    (5400.0, 604800.0)
    """
    compact = text.strip().lower()
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h, 7d or 1h30m")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def requeue_letter(app: Celery, letter: DeadLetter, *, queue: str | None = None) -> str:
    """Publish the letter's task again with a new task ID, in the letter's trace.

    The arguments come from the letter's JSON copy (never from its ``repr``); the new
    message carries a ``traceparent`` with the letter's trace ID and a new parent span.
    Goes to ``queue``, else to the queue the task last ran from, else where the app routes
    it. Returns the new task ID; raises :class:`RequeueRefusedError` when the arguments
    were not JSON-serialisable.
    """
    if letter.args_json is None or letter.kwargs_json is None:
        which = "args" if letter.args_json is None else "kwargs"
        raise RequeueRefusedError(
            f"its {which} were not kept as JSON (not JSON-serialisable, or over 64 KiB), so "
            "they cannot be sent again as they were (the letter keeps only a capped repr)"
        )
    args = json.loads(letter.args_json)
    kwargs = json.loads(letter.kwargs_json)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise RequeueRefusedError("its args are not a JSON list or its kwargs not an object")
    try:
        trace = TraceContext(letter.trace_id, new_span_id())
    except ValueError:
        trace = new_trace()
    task_id = str(uuid.uuid4())
    options: dict[str, Any] = {"task_id": task_id, "headers": {names.TRACE: trace.traceparent()}}
    target = queue or letter.queue
    if target:
        options["queue"] = target
    app.send_task(letter.task_name, args=args, kwargs=kwargs, **options)
    return task_id


def _letter_id(value: str) -> str:
    if not _ID_RE.match(value):
        raise CommandError(
            f"{safe_token(value)!r} is not a dead-letter ID (they look like 1730000000000-0)",
            EX_USAGE,
        )
    return value


def _load(s: Session, letter_id: str) -> DeadLetter:
    letter_id = _letter_id(letter_id)
    with s.talking():
        try:
            letter = s.letters.get(letter_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise CommandError(f"dead letter {letter_id} is malformed ({short(exc)})") from None
    if letter is None:
        raise CommandError(f"no dead letter {letter_id} under prefix {s.prefix!r}")
    return letter


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    data = asdict(letter)
    data["history"] = list(letter.history)
    return data


@click.group(name="dead-letters")
def dead_letters() -> None:
    """Tasks that gave up or failed permanently (a bounded Redis stream)."""


@dead_letters.command(name="list")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many of the newest letters.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_context
def list_letters(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The newest dead letters, newest first."""
    s = session(ctx)
    with s.talking():
        try:
            letters = s.letters.list(limit)
        except (KeyError, TypeError, ValueError) as exc:
            raise CommandError(
                f"the dead-letter stream holds a malformed entry ({short(exc)})"
            ) from None
        total = s.letters.count()
    if as_json:
        click.echo(json.dumps([_as_json(x) for x in letters], indent=2, ensure_ascii=True))
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [
        [
            x.id,
            utc(x.failed_at),
            safe_token(x.task_name, 60),
            safe_token(x.verdict, 20),
            str(x.attempts),
            safe_text(x.cause, 60),
        ]
        for x in letters
    ]
    click.echo(table(["ID", "FAILED AT", "TASK", "VERDICT", "ATTEMPTS", "CAUSE"], rows))
    if total > len(letters):
        click.echo(f"({len(letters)} of {total}; --limit for more)")


@dead_letters.command()
@click.argument("letter_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the letter as JSON.")
@click.pass_context
def show(ctx: click.Context, letter_id: str, as_json: bool) -> None:
    """One dead letter, with its attempt history."""
    letter = _load(session(ctx), letter_id)
    if as_json:
        click.echo(json.dumps(_as_json(letter), indent=2, ensure_ascii=True))
        return
    fields = [
        ("id", letter.id),
        ("task", f"{safe_token(letter.task_name)} [{safe_token(letter.task_id)}]"),
        ("verdict", safe_token(letter.verdict)),
        ("reason", safe_text(letter.reason)),
        ("cause", safe_text(letter.cause)),
        ("attempts", str(letter.attempts)),
        ("trace", safe_token(letter.trace_id)),
        ("worker", safe_token(letter.worker)),
        ("queue", safe_token(letter.queue) if letter.queue else "-"),
        ("first attempt", utc(letter.first_attempt_at)),
        ("failed at", utc(letter.failed_at)),
        ("args", safe_text(letter.args, 2_000)),
        ("kwargs", safe_text(letter.kwargs, 2_000)),
        (
            "requeue",
            "possible"
            if letter.args_json is not None and letter.kwargs_json is not None
            else "refused: arguments not kept as JSON",
        ),
    ]
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        click.echo(f"{key + ':':<{width}} {value}")
    click.echo("history:")
    for line in letter.history:
        click.echo(f"  {safe_text(line)}")


@dead_letters.command()
@click.argument("letter_id", metavar="ID")
@click.option(
    "--queue",
    "-Q",
    default=None,
    help="Send it to this queue (default: the queue it last ran from).",
)
@click.pass_context
def requeue(ctx: click.Context, letter_id: str, queue: str | None) -> None:
    """Publish the task again (new task ID, same trace), then remove the letter.

    Prints the new task ID.
    """
    s = session(ctx)
    letter = _load(s, letter_id)
    try:
        new_id = requeue_letter(s.app, letter, queue=queue)
    except RequeueRefusedError as exc:
        raise CommandError(f"dead letter {letter.id} not requeued: {exc}") from None
    except OperationalError as exc:
        raise CommandError(
            f"broker unreachable; dead letter {letter.id} kept ({short(exc)})", EX_UNAVAILABLE
        ) from None
    click.echo(new_id)
    click.echo(
        f"requeued {safe_token(letter.task_name)} [{safe_token(letter.task_id)}] as {new_id}",
        err=True,
    )
    try:
        with s.talking():
            s.letters.delete(letter.id)
    except CommandError as exc:
        raise CommandError(
            f"requeued as {new_id}, but dead letter {letter.id} was not removed: {exc.message}",
            exc.exit_code,
        ) from None


@dead_letters.command()
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    default=None,
    help="Only letters older than this: 90s, 15m, 12h, 7d, 1h30m.",
)
@click.option("--force", "-f", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, older_than: str | None, force: bool) -> None:
    """Delete dead letters (all of them, or those older than DURATION)."""
    seconds: float | None = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as exc:
            raise CommandError(safe_text(str(exc)), EX_USAGE) from None
    s = session(ctx)
    with s.talking():
        total = s.letters.count()
    if total == 0:
        click.echo("purged 0 dead letters")
        return
    if not force:
        which = f"older than {older_than}" if older_than else "all"
        click.confirm(f"Delete the dead letters {which} (of {total})?", abort=True, err=True)
    with s.talking():
        removed = s.letters.purge(seconds)
    click.echo(f"purged {removed} dead letter{'s' if removed != 1 else ''}")
