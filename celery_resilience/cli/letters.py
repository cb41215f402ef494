"""``celery -A proj resilience dead-letters ...``: list, show, requeue, purge.

A letter is only ever deleted by ``purge`` or after a successful ``requeue``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
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
from celery_resilience.integration.requeue import (
    RequeueRefusedError,
    destination,
    requeue_letter,
    requeue_problem,
)
from celery_resilience.observability.redaction import redact, redact_value
from celery_resilience.observability.tracing import safe_text, safe_token

if TYPE_CHECKING:
    from celery_resilience.state.deadletters import DeadLetter

__all__ = ["RequeueRefusedError", "dead_letters", "parse_duration", "requeue_letter"]

_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


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


def shown(letter: DeadLetter) -> DeadLetter:
    """``letter`` as it may be shown: every field redacted, its JSON copies of the
    arguments too (they stay intact in Redis, for a requeue)."""
    return replace(
        letter,
        args=redact(letter.args),
        kwargs=redact(letter.kwargs),
        args_json=_redacted_json(letter.args_json),
        kwargs_json=_redacted_json(letter.kwargs_json),
        cause=redact(letter.cause),
        reason=redact(letter.reason),
        history=tuple(redact(line) for line in letter.history),
    )


def _redacted_json(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return redact(text)
    return json.dumps(redact_value(value), ensure_ascii=True)


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    data = asdict(shown(letter))
    data["history"] = list(data["history"])
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
            letters = [shown(x) for x in s.letters.list(limit)]
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
    letter = shown(_load(session(ctx), letter_id))
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


def _matches(letter: DeadLetter, task: str | None, reason: str | None) -> bool:
    if task is not None and letter.task_name != task:
        return False
    if reason is None:
        return True
    wanted = reason.lower()
    return wanted == letter.verdict.lower() or wanted in letter.reason.lower()


def _selected(
    s: Session, ids: tuple[str, ...], task: str | None, reason: str | None, limit: int
) -> list[DeadLetter]:
    if ids and (task is not None or reason is not None):
        raise CommandError("give letter IDs or --task/--reason, not both", EX_USAGE)
    if not ids and task is None and reason is None:
        raise CommandError("give letter IDs, or --task NAME and/or --reason TEXT", EX_USAGE)
    if ids:
        return [_load(s, x) for x in dict.fromkeys(ids)]
    with s.talking():
        found = [x for x in s.letters.scan() if _matches(x, task, reason)]
    return found[:limit]


def _label(letter: DeadLetter) -> str:
    return f"{letter.id} {safe_token(letter.task_name)} [{safe_token(letter.task_id)}]"


@dead_letters.command()
@click.argument("letter_ids", metavar="[ID]...", nargs=-1)
@click.option("--task", "task", default=None, help="Every letter of this task name.")
@click.option(
    "--reason",
    default=None,
    help="Every letter whose verdict is TEXT (transient, permanent, rate_limited, "
    "deadline) or whose reason contains it (case-insensitive).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=1_000,
    show_default=True,
    help="At most this many letters (oldest first) with --task/--reason.",
)
@click.option(
    "--queue",
    "-Q",
    default=None,
    help="Send to this queue (default: the exchange and routing key it came by).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be requeued; send nothing.")
@click.pass_context
def requeue(
    ctx: click.Context,
    *,
    letter_ids: tuple[str, ...],
    task: str | None,
    reason: str | None,
    limit: int,
    queue: str | None,
    dry_run: bool,
) -> None:
    """Publish tasks again (new task ID, same trace); remove each letter once the broker
    confirmed its message.

    By ID, or in bulk with --task and/or --reason. Each task goes to the exchange and
    routing key its failed message came by (or --queue). A letter whose arguments were
    not kept as JSON, whose task this app does not register, or for which the broker has
    no route is refused and kept. Prints each new task ID (with --dry-run, each letter
    that would go, and where).
    """
    s = session(ctx)
    letters = _selected(s, letter_ids, task, reason, limit)
    if not letters:
        click.echo("no dead letters match", err=True)
        return
    sent = refused = 0
    for letter in letters:
        where = destination(letter, queue=queue).describe()
        if dry_run:
            problem = requeue_problem(s.app, letter)
            verdict = f"refused: {problem}" if problem else f"would requeue to {where}"
            click.echo(f"{_label(letter)}: {safe_text(verdict)}")
            continue
        try:
            new_id = requeue_letter(s.app, letter, queue=queue)
        except RequeueRefusedError as exc:
            refused += 1
            message = f"dead letter {letter.id} not requeued: {exc}"
            if len(letters) == 1:
                raise CommandError(safe_text(message)) from None
            click.echo(f"Error: {safe_text(message)}", err=True)
            continue
        except OperationalError as exc:
            done = f" ({sent} requeued before)" if sent else ""
            raise CommandError(
                f"broker unreachable; dead letter {letter.id} kept{done} ({short(exc)})",
                EX_UNAVAILABLE,
            ) from None
        except Exception as exc:  # noqa: BLE001 - any other broker failure: keep the letter
            done = f" ({sent} requeued before)" if sent else ""
            raise CommandError(
                f"the broker did not confirm the message; dead letter {letter.id} kept{done}, "
                f"though the task may have been sent ({short(exc)})",
                EX_UNAVAILABLE,
            ) from None
        sent += 1
        click.echo(new_id)
        click.echo(f"requeued {_label(letter)} as {new_id} to {safe_text(where)}", err=True)
        try:
            with s.talking():
                s.letters.delete(letter.id)
        except CommandError as exc:
            raise CommandError(
                f"requeued as {new_id}, but dead letter {letter.id} was not removed: {exc.message}",
                exc.exit_code,
            ) from None
    if len(letters) > 1 and not dry_run:
        click.echo(f"requeued {sent} of {len(letters)}; {refused} refused and kept", err=True)
    if refused:
        ctx.exit(1)


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
