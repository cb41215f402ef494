"""Named policies: resilience options declared once in configuration, shared by tasks.

::

    app.conf.resilience_policies = {
        "payments": {
            "max_retries": 8,
            "deadline": 600,
            "backoff": {"kind": "full_jitter", "base": 1.0, "cap": 60.0},
            "breaker": {"failure_rate": 0.5, "minimum_calls": 10, "open_for": 15},
            "rate_limit": "50/s",               # or {"rate": "50/s", "burst": 5}
            "concurrency": 10,                  # or {"limit": 10, "lease": 30}
            "on_open": "defer",                 # or "fail"
        },
    }

    @resilient_task(app=app, policy="payments")
    def charge(invoice_id): ...

(Django projects write ``CELERY_RESILIENCE_POLICIES`` and load it through Celery's
namespace as usual.) The breaker, rate limit and concurrency limit of a policy are named
after it, so every task naming the policy shares them.

Keys, all optional:

=================  ==========================================================================
key                value
=================  ==========================================================================
``max_retries``    int >= 0, or null (no limit)
``deadline``       seconds > 0, or null
``backoff``        ``{"kind": "full_jitter" | "exponential" | "exponential_jitter",
                   "base": s, "cap": s}`` or ``{"kind": "fixed", "seconds": s}``
``breaker``        the keywords of :class:`CircuitBreaker` (``name`` defaults to the
                   policy's), or null (no breaker)
``rate_limit``     ``"50/s"`` or ``{"rate": "50/s", "burst": n}``, or null
``concurrency``    ``n`` or ``{"limit": n, "lease": s}``, or null
``on_open``        ``"defer"`` or ``"fail"``
=================  ==========================================================================

The whole table is checked at once: an unknown key, a wrong type or an impossible value
raises ``ValueError`` naming the policy, the key and the value. Run-time overrides (see
``celery -A proj resilience policy``) use the same keys, dotted for nested ones
(``breaker.open_for=30``), and are checked the same way before they are stored.

Per-key limits (``key=``, ``max_keys=``) cannot be named here: a key is a function, so
they are declared in code; a policy that sets either is refused with a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import tenacity

from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = [
    "POLICY_KEYS",
    "merge",
    "parse_assignment",
    "parse_policy",
    "parse_table",
    "unset",
]

#: The keys a named policy may hold.
POLICY_KEYS = frozenset(
    {"max_retries", "deadline", "backoff", "breaker", "rate_limit", "concurrency", "on_open"}
)
_BACKOFF_KINDS = frozenset({"full_jitter", "exponential", "exponential_jitter", "fixed"})
_BREAKER_KEYS = frozenset(
    {
        "name",
        "failure_rate",
        "minimum_calls",
        "window",
        "open_for",
        "open_for_max",
        "half_open_calls",
        "probe_lease",
        "confidence",
        "throttle",
        "retry_budget",
        "retry_floor",
        "retry_exhausted",
    }
)
_NESTED = frozenset({"backoff", "breaker", "rate_limit", "concurrency"})
#: Options of a limit that a named policy cannot set (a key is a function).
_KEYED = frozenset({"key", "max_keys"})


def _fail(policy: str, key: str, value: object, why: str) -> ValueError:
    return ValueError(f"resilience policy {policy!r}: {key}={_show(value)}: {why}")


def _show(value: object) -> str:
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:119] + "…"


def _number(policy: str, key: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(policy, key, value, "must be a number")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise _fail(policy, key, value, "must be a finite number > 0")
    return float(value)


def _mapping(policy: str, key: str, value: object, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(policy, key, value, "must be an object")
    keyed = sorted(set(value) & _KEYED)
    if keyed:
        raise _fail(
            policy,
            f"{key}.{keyed[0]}",
            value[keyed[0]],
            "per-key limits take a key function: declare them in code, not in configuration",
        )
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(
            policy,
            f"{key}.{unknown[0]}",
            value[unknown[0]],
            f"unknown key (known: {', '.join(sorted(allowed))})",
        )
    return dict(value)


def _backoff(policy: str, value: object) -> Any:
    spec = _mapping(policy, "backoff", value, frozenset({"kind", "base", "cap", "seconds"}))
    kind = spec.get("kind", "full_jitter")
    if kind not in _BACKOFF_KINDS:
        raise _fail(policy, "backoff.kind", kind, f"must be one of {sorted(_BACKOFF_KINDS)}")
    if kind == "fixed":
        if "seconds" not in spec:
            raise _fail(policy, "backoff.seconds", None, "a fixed backoff needs seconds")
        return tenacity.wait_fixed(_number(policy, "backoff.seconds", spec["seconds"]))
    base = _number(policy, "backoff.base", spec.get("base", 1.0))
    cap = _number(policy, "backoff.cap", spec.get("cap", 60.0))
    if cap < base:
        raise _fail(policy, "backoff.cap", cap, f"must be >= backoff.base ({base:g})")
    if kind == "full_jitter":
        return tenacity.wait_random_exponential(multiplier=base, max=cap)
    if kind == "exponential":
        return tenacity.wait_exponential(multiplier=base, max=cap)
    return tenacity.wait_exponential_jitter(initial=base, max=cap, jitter=base)


def _policy_object(policy: str, key: str, build: Any, kwargs: dict[str, Any]) -> Any:
    try:
        return build(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _fail(policy, key, kwargs, str(exc)) from None


def parse_policy(name: str, raw: object) -> dict[str, Any]:
    """Check one policy; return the task options it sets (TaskOptions field names)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"resilience policy names are non-empty strings, got {name!r}")
    if not isinstance(raw, Mapping):
        raise ValueError(  # noqa: TRY004 - every bad policy is a ValueError (a configuration error)
            f"resilience policy {name!r}: must be an object, got {_show(raw)}"
        )
    unknown = sorted(set(raw) - POLICY_KEYS)
    if unknown:
        raise _fail(
            name,
            unknown[0],
            raw[unknown[0]],
            f"unknown key (known: {', '.join(sorted(POLICY_KEYS))})",
        )
    out: dict[str, Any] = {}
    if "max_retries" in raw:
        value = raw["max_retries"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise _fail(name, "max_retries", value, "must be an int >= 0 or null")
        out["max_retries"] = value
    if "deadline" in raw:
        value = raw["deadline"]
        out["deadline"] = None if value is None else _number(name, "deadline", value)
    if "backoff" in raw:
        out["backoff"] = _backoff(name, raw["backoff"])
    if "breaker" in raw:
        value = raw["breaker"]
        if value is None:
            out["breaker"] = None
        else:
            spec = _mapping(name, "breaker", value, _BREAKER_KEYS)
            spec.setdefault("name", name)
            out["breaker"] = _policy_object(name, "breaker", CircuitBreaker, spec)
    if "rate_limit" in raw:
        value = raw["rate_limit"]
        if value is None:
            out["limiter"] = None
        else:
            spec = (
                {"rate": value}
                if not isinstance(value, Mapping)
                else _mapping(name, "rate_limit", value, frozenset({"rate", "burst"}))
            )
            out["limiter"] = _policy_object(name, "rate_limit", RateLimit, {"name": name, **spec})
    if "concurrency" in raw:
        value = raw["concurrency"]
        if value is None:
            out["concurrency"] = None
        else:
            spec = (
                _mapping(name, "concurrency", value, frozenset({"limit", "lease"}))
                if isinstance(value, Mapping)
                else {"limit": value}
            )
            out["concurrency"] = _policy_object(
                name, "concurrency", ConcurrencyLimit, {"name": name, **spec}
            )
    if "on_open" in raw:
        value = raw["on_open"]
        if value not in ("defer", "fail"):
            raise _fail(name, "on_open", value, "must be 'defer' or 'fail'")
        out["on_open"] = value
    return out


def parse_table(table: object) -> dict[str, dict[str, Any]]:
    """Check the whole ``resilience_policies`` table; return each policy's task options."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ValueError(  # noqa: TRY004 - every bad policy is a ValueError (a configuration error)
            f"resilience_policies must map names to objects, got {_show(table)}"
        )
    return {name: parse_policy(name, raw) for name, raw in table.items()}


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base``: nested objects (breaker, backoff...) merge key by key."""
    out = dict(base)
    for key, value in changes.items():
        old = _as_object(key, out.get(key))
        if key in _NESTED and isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = {**old, **value}
        else:
            out[key] = value
    return out


def _as_object(key: str, value: object) -> object:
    """The short forms ``"50/s"`` and ``10`` as the objects they stand for."""
    if key == "rate_limit" and isinstance(value, str):
        return {"rate": value}
    if key == "concurrency" and isinstance(value, int) and not isinstance(value, bool):
        return {"limit": value}
    return value


def unset(values: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """``values`` without ``keys`` (dotted keys remove one field of a nested object)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()}
    for key in keys:
        head, _, field = key.partition(".")
        if field and isinstance(out.get(head), dict):
            out[head].pop(field, None)
            if not out[head]:
                out.pop(head)
        else:
            out.pop(head, None)
    return out


def parse_assignment(policy: str, text: str) -> dict[str, Any]:
    """``KEY=VALUE`` as an override: ``max_retries=1``, ``breaker.open_for=30``,
    ``rate_limit=20/s``, ``deadline=null``. VALUE is read as JSON when it parses, else as
    a string. Returns the change as a (nested) mapping, not yet checked."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"resilience policy {policy!r}: expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw.strip()
    head, _, field = key.partition(".")
    if head not in POLICY_KEYS:
        raise _fail(policy, key, value, f"unknown key (known: {', '.join(sorted(POLICY_KEYS))})")
    if field:
        if head not in _NESTED or "." in field:
            raise _fail(policy, key, value, f"{head} has no field {field!r}")
        return {head: {field: value}}
    return {head: value}
