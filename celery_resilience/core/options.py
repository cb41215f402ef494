"""The resilience options of one task, checked when the task is declared.

A fresh :class:`TaskOptions` is built for every attempt from the task's attributes, so
no per-call state ever lives on the shared task object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from celery_resilience.core.backoff import DEFAULT_BACKOFF, check_backoff
from celery_resilience.core.classify import Classifier
from celery_resilience.core.keying import KeyFunctionError, key_text
from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit
from celery_resilience.core.validate import checked_number

__all__ = [
    "DEFAULTS",
    "OPTION_NAMES",
    "TaskOptions",
    "bind_keys",
    "check_options",
    "options_from",
]

#: Every resilience option a task accepts (as a decorator argument or class attribute).
OPTION_NAMES = (
    "breaker",
    "limiter",
    "concurrency",
    "max_retries",
    "deadline",
    "backoff",
    "classifier",
    "retry_on",
    "give_up_on",
    "on_open",
    "policy",
)

ExceptionTypes = tuple[type[BaseException], ...]
#: What a task does when its breaker refuses the call: defer (re-queue until it may pass),
#: fail at once, or return what a fallback callable returns (called with the task's args).
OnOpen = Literal["defer", "fail"] | Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The options in force for one attempt."""

    breaker: CircuitBreaker | None = None
    limiter: RateLimit | None = None
    concurrency: ConcurrencyLimit | None = None
    max_retries: int | None = 5
    deadline: float | None = None
    backoff: Callable[..., Any] = DEFAULT_BACKOFF
    classifier: Classifier | None = None
    retry_on: ExceptionTypes = ()
    give_up_on: ExceptionTypes = ()
    on_open: OnOpen = "defer"
    policy: str | None = None


#: The default of every option, in one place (ResilientTask's attributes read it too).
DEFAULTS = TaskOptions()


def bind_keys(options: TaskOptions, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskOptions:
    """``options`` with each keyed limit bound to this call's key (see
    :mod:`celery_resilience.core.keying`); the same object when none has a key.

    Raises :class:`~celery_resilience.core.keying.KeyFunctionError` when a key function
    raises.
    """
    changes: dict[str, Any] = {}
    for field_name, kind in (
        ("breaker", "CircuitBreaker"),
        ("limiter", "RateLimit"),
        ("concurrency", "ConcurrencyLimit"),
    ):
        policy = getattr(options, field_name)
        if policy is None or policy.key is None:
            continue
        try:
            text = key_text(policy.key, args, kwargs)
        except Exception as exc:
            raise KeyFunctionError(kind, policy.name, exc) from exc
        changes[field_name] = policy.bind(text)
    return replace(options, **changes) if changes else options


def _kind(value: object) -> str:
    return type(value).__name__


def _exception_types(task: str, option: str, value: object) -> ExceptionTypes:
    items = value if isinstance(value, (tuple, list, frozenset, set)) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(
                f"task {task!r}: option {option} must be an exception class or a tuple "
                f"of them, got {item!r}"
            )
    return tuple(items)


def _policy(task: str, option: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(
            f"task {task!r}: option {option} must be a {kind.__name__} or None, got {_kind(value)}"
        )


def check_options(task: str, values: Mapping[str, Any]) -> TaskOptions:
    """Validate the options of ``task``; raise TypeError/ValueError naming option and task."""
    _policy(task, "breaker", values.get("breaker"), CircuitBreaker)
    _policy(task, "limiter", values.get("limiter"), RateLimit)
    _policy(task, "concurrency", values.get("concurrency"), ConcurrencyLimit)

    max_retries = values.get("max_retries", DEFAULTS.max_retries)
    if max_retries is not None:
        checked_number(
            max_retries, what=f"task {task!r}: option max_retries", strict=False, integer=True
        )
    deadline = values.get("deadline")
    if deadline is not None:
        checked_number(deadline, what=f"task {task!r}: option deadline (seconds)")

    backoff = values.get("backoff", DEFAULTS.backoff)
    try:
        check_backoff(backoff)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"task {task!r}: option backoff: {exc}") from None

    classifier = values.get("classifier")
    if classifier is not None and not callable(classifier):
        raise TypeError(
            f"task {task!r}: option classifier must be a callable taking the exception, "
            f"got {_kind(classifier)}"
        )
    on_open = values.get("on_open", DEFAULTS.on_open)
    if on_open not in ("defer", "fail") and not callable(on_open):
        raise ValueError(
            f"task {task!r}: option on_open must be 'defer', 'fail' or a callable "
            f"returning a fallback result, got {on_open!r}"
        )
    policy = values.get("policy")
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise TypeError(
            f"task {task!r}: option policy must be the name of a resilience policy, got {policy!r}"
        )
    return TaskOptions(
        breaker=values.get("breaker"),
        limiter=values.get("limiter"),
        concurrency=values.get("concurrency"),
        max_retries=max_retries,
        deadline=None if deadline is None else float(deadline),
        backoff=backoff,
        classifier=classifier,
        retry_on=_exception_types(task, "retry_on", values.get("retry_on", ())),
        give_up_on=_exception_types(task, "give_up_on", values.get("give_up_on", ())),
        on_open=on_open,
        policy=policy,
    )


def options_from(owner: object) -> TaskOptions:
    """The options found on ``owner``'s attributes (already checked at declaration)."""
    found = {name: getattr(owner, name, getattr(DEFAULTS, name)) for name in OPTION_NAMES}
    for name in ("retry_on", "give_up_on"):
        found[name] = tuple(found[name] or ())
    return TaskOptions(**found)
