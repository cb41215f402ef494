"""``celery -A proj resilience``: breakers, limiters and dead letters, from a terminal.

::

    celery -A proj resilience status [--json]
    celery -A proj resilience breaker open|close|reset NAME   (open and close pin it until reset)
    celery -A proj resilience dead-letters list [--limit N] [--json]
    celery -A proj resilience dead-letters show ID [--json]
    celery -A proj resilience dead-letters requeue ID... [--queue QUEUE] [--dry-run]
    celery -A proj resilience dead-letters requeue --task NAME --reason TEXT [--dry-run]
    celery -A proj resilience dead-letters purge [--older-than DURATION] [--force]
    celery -A proj resilience policy show|set|unset ...     (see cli_policy)
    celery -A proj resilience parked list [--reason R] [--task-name N] [--json]
    celery -A proj resilience parked release (--all | --id ID | --task-name N | --reason R)
                                             [--dry-run]

A breaker or limiter exists for the command when a task of the app declares it or Redis
holds state for it. Failures print one line on stderr and exit non-zero: 1 (no such
breaker or letter, refused), 2 (bad input), 69 (state store or broker unreachable),
78 (configuration). Names from Redis or from task input are escaped before they are
printed; in ``--json`` output they are JSON strings.

Registered through the ``celery.commands`` entry point, like Flower.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import click

from celery_resilience import signals
from celery_resilience.cli.kit import CommandError, Session, session, table, when
from celery_resilience.cli.letters import dead_letters
from celery_resilience.cli.parked import parked, parked_status, render_parked
from celery_resilience.cli.policy import policy
from celery_resilience.integration.inspection import (
    UNDECLARED_TTL,
    Declared,
    breaker_row,
    breaker_status,
    declared,
    keys_row,
    limiter_row,
    limiter_status,
    policy_for,
    scan_names,
)
from celery_resilience.observability.tracing import safe_token

__all__ = ["resilience"]

_ACTIONS: dict[str, Literal["open", "close", "reset"]] = {
    "open": "open",
    "close": "close",
    "reset": "reset",
}


@click.group(name="resilience")
@click.pass_context
def resilience(ctx: click.Context, /, **_: Any) -> None:
    """Circuit breakers, rate limits, dead letters and parked tasks of celery-resilience."""


def _found(s: Session) -> Declared:
    s.app.loader.import_default_modules()
    return declared(s.app)


def _quote(name: str) -> str:
    return f"'{safe_token(name)}'"


def collect_status(s: Session) -> tuple[dict[str, Any], list[str]]:
    """The status object (see the ``status`` command) and names of keys that were skipped."""
    skipped: list[str] = []
    breakers: list[dict[str, Any]] = []
    limiters: list[dict[str, Any]] = []
    with s.talking():
        found = _found(s)
        in_redis = scan_names(s.client, s.settings.keys, ["breaker"])
        stored = bool(in_redis)
        for name in sorted(set(found.breakers) | in_redis):
            try:
                policy = policy_for(name, found)
            except ValueError:
                skipped.append(name)
                continue
            status = breaker_status(s.store, policy)
            keys = keys_row(s.store, "breaker", name, found.breakers.get(name))
            if status.exists or name in found.breakers or keys is not None:
                row = breaker_row(status, found)
                if keys is not None:
                    row["keys"] = keys
                breakers.append(row)
        in_redis = scan_names(s.client, s.settings.keys, ["limiter", "concurrency"])
        stored = stored or bool(in_redis)
        for name in sorted(found.limiter_names | in_redis):
            status_l = limiter_status(s.store, name, found)
            keys = keys_row(s.store, "limiter", name, found.rates.get(name))
            pool_keys = keys_row(s.store, "concurrency", name, found.pools.get(name))
            if status_l.exists or name in found.limiter_names or keys or pool_keys:
                row = limiter_row(status_l, found)
                if keys is not None:
                    row["keys"] = keys
                if pool_keys is not None:
                    row["concurrency_keys"] = pool_keys
                limiters.append(row)
        count = s.letters.count()
        now = s.now()
    parked_data = parked_status(s)
    data = {
        "store": {"address": s.where, "prefix": s.prefix, "found": stored or count > 0},
        "now": now,
        "breakers": breakers,
        "limiters": limiters,
        "dead_letters": {"count": count, "max": s.settings.dead_letters_max},
        "parked": parked_data,
    }
    return data, skipped


def _section(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    return [f"{title} ({len(rows)})", table(headers, rows) if rows else "(none)", ""]


def _declared(row: dict[str, Any]) -> str:
    return "yes" if row["declared"] else "no (Redis only)"


def nothing_found(store: dict[str, Any]) -> str:
    """The warning for a state store that holds nothing under the prefix."""
    return (
        f"Found nothing under prefix {safe_token(str(store['prefix']))!r} in "
        f"{safe_token(str(store['address']))}: no worker has kept state here with this prefix "
        "(yet). If workers are running, they use another resilience_key_prefix or "
        "resilience_backend_url; the rows below are only what this app declares."
    )


_BREAKER_COLUMNS = [
    *("NAME", "STATE", "FAILURE RATE", "FAILED/CALLS", "SHED", "RETRIES", "OPEN UNTIL"),
    "DECLARED",
]


def _retries(budget: object) -> str:
    """A retry budget's use: "retries sent/allowed" ("-" for a breaker without one)."""
    if not isinstance(budget, dict):
        return "-"
    return f"{budget['retries']}/{budget['allowed']:g}"


def _keys_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per keyed breaker, rate limit and concurrency limit (keys escaped)."""
    rows = []
    for kind, section, field in (
        ("breaker", "breakers", "keys"),
        ("rate limit", "limiters", "keys"),
        ("concurrency", "limiters", "concurrency_keys"),
    ):
        for item in data[section]:
            keys = item.get(field)
            if not keys:
                continue
            cap = f"/{keys['max_keys']}" if keys["max_keys"] else ""
            busiest = ", ".join(f"{safe_token(t['key'])} ({t['uses']})" for t in keys["top"][:5])
            rows.append(
                [
                    kind,
                    safe_token(item["name"]),
                    f"{keys['live']}{cap}",
                    str(keys["overflow"]),
                    str(keys["open"]) if "open" in keys else "-",
                    busiest or "-",
                ]
            )
    return rows


def render_status(data: dict[str, Any]) -> str:
    """The status object as readable tables."""
    now = data["now"]
    breakers = [
        [
            safe_token(b["name"]),
            b["state"],
            f"{b['failure_rate']:.0%}",
            f"{b['failures']}/{b['calls']}",
            f"{b.get('shed') or 0:.0%}",
            _retries(b.get("retry_budget")),
            when(b["open_until"], now),
            _declared(b),
        ]
        for b in data["breakers"]
    ]
    limiters = [
        [
            safe_token(x["name"]),
            x["rate"] or "-",
            f"{x['wait']:.2f} s",
            f"{x['in_use']}/{x['concurrency']}" if x["concurrency"] else str(x["in_use"]),
            when(x["paused_until"], now),
            _declared(x),
        ]
        for x in data["limiters"]
    ]
    found = data["store"].get("found", True)
    keyed = _keys_rows(data)
    return "\n".join(
        [
            f"State store {data['store']['address']} (prefix {data['store']['prefix']!r})",
            *([] if found else [nothing_found(data["store"])]),
            "",
            *_section(
                "Breakers",
                _BREAKER_COLUMNS,
                breakers,
            ),
            *_section(
                "Limiters", ["NAME", "RATE", "WAIT", "IN USE", "PAUSED UNTIL", "DECLARED"], limiters
            ),
            *(
                _section("Keys", ["KIND", "NAME", "LIVE", "OVERFLOW", "OPEN", "BUSIEST"], keyed)
                if keyed
                else []
            ),
            *([render_parked(data["parked"])] if "parked" in data else []),
            f"Dead letters: {data['dead_letters']['count']}",
        ]
    )


@resilience.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Breakers, limiters, the dead-letter count and the parked tasks.

    JSON: {"store": {"address", "prefix", "found"}, "breakers": [{"name", "state",
    "failure_rate", "calls", "shed", "retry_budget", "open_until", ...}], "limiters":
    [{"name", "rate", "wait", "in_use", "paused_until", ...}], "dead_letters": {"count",
    ...}, "parked": {"count", "by_reason", "claimed", "oldest_due_in", ...}}. "found" is
    false when Redis holds nothing under the prefix (a wrong prefix or Redis, or no worker
    yet): the table then says so.
    """
    data, skipped = collect_status(session(ctx))
    if skipped:
        click.echo(
            f"ignored {len(skipped)} breaker key(s) with a name no breaker can have: "
            + ", ".join(_quote(name) for name in skipped[:5]),
            err=True,
        )
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=True))
    else:
        click.echo(render_status(data))


@resilience.command()
@click.argument("action", type=click.Choice(["open", "close", "reset"]))
@click.argument("name")
@click.pass_context
def breaker(ctx: click.Context, action: str, name: str) -> None:
    """Pin the breaker NAME open or closed until `reset`, or reset it.

    \b
    open   pin it open: every task behind it is deferred (or fails, with on_open="fail")
           until `reset`
    close  pin it closed: every call goes through, whatever fails; failures do not open
           it again until `reset`
    reset  back to CLOSED with an empty window: failures open it again (ends open/close)

    For a NAME no task of the app declares (state only Redis holds), the state written
    expires after a day unless a worker's task uses the breaker.
    """
    s = session(ctx)
    with s.talking():
        found = _found(s)
    try:
        policy = policy_for(name, found)
    except ValueError:
        raise CommandError(f"{_quote(name)} cannot name a breaker", 2) from None
    with s.talking():
        if name not in found.breakers and not breaker_status(s.store, policy).exists:
            raise CommandError(
                f"no breaker {_quote(name)}: no task of this app declares it and the state "
                f"store holds nothing for it under prefix {s.prefix!r}"
            )
        ttl = None if name in found.breakers else UNDECLARED_TTL
        result = s.store.breaker(policy, _ACTIONS[action], ttl=ttl)
    signals.send_transitions(result.transitions)
    old = result.transitions[0].old.value if result.transitions else result.state.value
    click.echo(f"breaker {_quote(name)}: {result.state.value} (was {old})")
    pinned = {"open": "it stays open", "close": "it stays closed, whatever fails,"}
    if action in pinned:
        click.echo(f"{pinned[action]} until `resilience breaker reset {safe_token(name)}`")


resilience.add_command(dead_letters)
resilience.add_command(policy)
resilience.add_command(parked)
