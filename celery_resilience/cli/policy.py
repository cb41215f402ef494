"""``celery -A proj resilience policy``: read and change named policies at run time.

::

    celery -A proj resilience policy show [NAME] [--json]
    celery -A proj resilience policy set NAME KEY=VALUE [KEY=VALUE ...]
    celery -A proj resilience policy unset NAME [KEY ...]

``set`` and ``unset`` change the policy's overrides in Redis; every worker process follows
within about two seconds. A change is checked against the whole policy before it is
stored: a bad value is refused, and nothing changes. Keys are those of
``resilience_policies``, dotted for nested ones: ``max_retries=1``,
``breaker.open_for=120``, ``rate_limit=5/s``, ``on_open=fail``, ``deadline=null``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from celery_resilience.cli.kit import CommandError, Session, session, table, when
from celery_resilience.core.policies import merge, parse_assignment, parse_policy, unset
from celery_resilience.integration.named import configured_policies
from celery_resilience.observability.tracing import safe_token
from celery_resilience.state.overrides import OverrideConflictError, Overrides

__all__ = ["policy"]

_ATTEMPTS = 5


def _config(s: Session) -> dict[str, dict[str, Any]]:
    try:
        return configured_policies(s.app)
    except ValueError as exc:
        raise CommandError(str(exc), 78) from None


def _named(s: Session, name: str) -> dict[str, Any]:
    config = _config(s)
    if name not in config:
        known = ", ".join(sorted(safe_token(n) for n in config)) or "none"
        raise CommandError(f"no policy named {safe_token(name)!r} (known: {known})")
    return config[name]


def _describe(values: dict[str, Any]) -> str:
    if not values:
        return "-"
    return " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(values.items()))


@click.group(name="policy")
def policy() -> None:
    """Named policies: their configuration and run-time overrides."""


@policy.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def show(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show every policy (or NAME): configured, overridden, in force."""
    s = session(ctx)
    config = {name: _named(s, name)} if name is not None else _config(s)
    with s.talking():
        overrides = Overrides(s.client, s.settings.keys).all()
        now = s.now()
    rows: list[dict[str, Any]] = []
    for policy_name in sorted(config):
        override = overrides.get(policy_name)
        values = override.values if override is not None else {}
        rows.append(
            {
                "name": policy_name,
                "version": override.version if override is not None else 0,
                "configured": config[policy_name],
                "overrides": values,
                "effective": merge(config[policy_name], values),
                "updated_at": override.at if override is not None else None,
            }
        )
    if as_json:
        click.echo(json.dumps({"policies": rows}, sort_keys=True))
        return
    click.echo(
        table(
            ["POLICY", "VERSION", "OVERRIDES", "UPDATED", "IN FORCE"],
            [
                [
                    safe_token(row["name"]),
                    str(row["version"]),
                    _describe(row["overrides"]),
                    when(row["updated_at"], now),
                    _describe(row["effective"]),
                ]
                for row in rows
            ],
        )
    )


def _change(
    s: Session, name: str, compute: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """Apply ``compute`` to the stored overrides, check, store (compare-and-set)."""
    config = _named(s, name)
    store = Overrides(s.client, s.settings.keys)
    for _ in range(_ATTEMPTS):
        with s.talking():
            current = store.get(name)
        values = compute(current.values)
        try:
            parse_policy(name, merge(config, values))
        except ValueError as exc:
            raise CommandError(f"refused, nothing changed: {exc}") from None
        try:
            with s.talking():
                return store.put(name, values, current.version), values
        except OverrideConflictError:
            continue
    raise CommandError(f"policy {safe_token(name)!r} keeps changing; try again")


@policy.command(name="set")
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True)
@click.pass_context
def set_(ctx: click.Context, name: str, assignments: tuple[str, ...]) -> None:
    """Override KEY=VALUE pairs of policy NAME (checked before anything is stored)."""
    s = session(ctx)
    changes: dict[str, Any] = {}
    try:
        for text in assignments:
            changes = merge(changes, parse_assignment(name, text))
    except ValueError as exc:
        raise CommandError(f"refused, nothing changed: {exc}", 2) from None
    version, values = _change(s, name, lambda current: merge(current, changes))
    click.echo(f"policy {safe_token(name)!r} is now version {version}: {_describe(values)}")


@policy.command(name="unset")
@click.argument("name")
@click.argument("keys", nargs=-1)
@click.pass_context
def unset_(ctx: click.Context, name: str, keys: tuple[str, ...]) -> None:
    """Drop overrides of policy NAME: the KEYs given, or all of them."""
    s = session(ctx)
    version, values = _change(s, name, lambda current: unset(current, list(keys)) if keys else {})
    click.echo(f"policy {safe_token(name)!r} is now version {version}: {_describe(values)}")
