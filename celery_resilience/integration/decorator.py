"""``@resilient_task``: declare a resilient task from a function."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from celery import shared_task

from celery_resilience.core.options import OPTION_NAMES, check_options
from celery_resilience.integration.named import config_book
from celery_resilience.integration.task import ResilientTask, refuse_autoretry
from celery_resilience.integration.wiring import wire

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["resilient_task"]


@overload
def resilient_task(fun: Callable[..., Any], /) -> ResilientTask: ...


@overload
def resilient_task(
    *, app: Celery | None = None, **options: Any
) -> Callable[[Callable[..., Any]], ResilientTask]: ...


def resilient_task(
    fun: Callable[..., Any] | None = None, /, *, app: Celery | None = None, **options: Any
) -> ResilientTask | Callable[[Callable[..., Any]], ResilientTask]:
    """Declare a resilient task, as ``app.task`` (with ``app=``) or ``shared_task`` does.

    Resilience options (``breaker``, ``limiter``, ``concurrency``, ``max_retries``,
    ``deadline``, ``backoff``, ``classifier``, ``retry_on``, ``give_up_on``) sit beside
    Celery's own (``bind``, ``name``, ``acks_late``, ``time_limit``...):

    ```python
    @resilient_task(app=app, bind=True, breaker=CircuitBreaker("payments"),
                    limiter=RateLimit("payments", "50/s"), max_retries=8, deadline=600)
    def charge(self, invoice_id):
        resp = self.http.post(f"https://payments.example/charges/{invoice_id}")
        resp.raise_for_status()
        return resp.json()
    ```

    ``on_open`` (``"defer"``, ``"fail"`` or a fallback callable) and ``policy`` (a name in
    ``resilience_policies``) complete them. A task declared with ``app=`` belongs to that
    app alone (``shared=True`` gives it to every app, as ``app.task`` does). Every option
    is checked here: a wrong type or value raises ``TypeError`` or ``ValueError`` naming
    the option and the task; Celery's ``autoretry_for`` is refused (use ``retry_on``).
    """
    base = options.pop("base", ResilientTask)
    if not (isinstance(base, type) and issubclass(base, ResilientTask)):
        raise TypeError(
            f"resilient_task: base must be ResilientTask or a subclass of it, got {base!r}"
        )

    def decorate(f: Callable[..., Any]) -> ResilientTask:
        if not callable(f):
            raise TypeError(f"resilient_task decorates a function, got {type(f).__name__}")
        name = options.get("name") or f"{f.__module__}.{f.__qualname__}"
        refuse_autoretry(name, options)
        wire()
        checked = check_options(name, {key: options[key] for key in OPTION_NAMES if key in options})
        if app is not None and checked.policy is not None:
            try:
                config_book(app).config_of(checked.policy)
            except ValueError as exc:
                raise ValueError(f"task {name!r}: option policy: {exc}") from None
        if app is not None:
            # declared for this app alone (Celery's ``app.task`` would also give it to
            # every app finalized later, where its policy may not exist)
            declare = app.task(base=base, **{"shared": False, **options})
            task: ResilientTask = declare(f)  # type: ignore[no-untyped-call]
        else:
            task = shared_task(base=base, **options)(f)  # type: ignore[no-untyped-call]
        return task

    if fun is not None:
        if options or app is not None:
            raise TypeError("resilient_task: use @resilient_task or @resilient_task(...)")
        return decorate(fun)
    return decorate
