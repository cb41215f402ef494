"""``ResilientTask``: a ``celery.Task`` whose attempts go through the resilience flow."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Task

from celery_resilience.core.options import (
    DEFAULTS,
    OPTION_NAMES,
    OnOpen,
    TaskOptions,
    check_options,
    options_from,
)
from celery_resilience.integration.eager import run_eager
from celery_resilience.integration.http import ResilientSession, session_for_process
from celery_resilience.integration.named import config_book
from celery_resilience.integration.runtime import runtime_for
from celery_resilience.integration.wiring import wire
from celery_resilience.integration.worker import run_in_worker
from celery_resilience.observability.redaction import redact_exception

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery_resilience.core.classify import Classifier
    from celery_resilience.core.limits import CircuitBreaker, ConcurrencyLimit, RateLimit

__all__ = ["ResilientTask", "resilient_task_names", "resilient_tasks"]

#: Names of every resilient task declared in this process (for the publish hook).
resilient_task_names: set[str] = set()


def refuse_autoretry(task: str, options: Any) -> None:
    """Celery's autoretry_for would retry behind the resilience flow's back (every failure
    turned into a Retry before it is classified): refuse it, naming the option to use."""
    if options.get("autoretry_for"):
        raise TypeError(
            f"task {task!r}: autoretry_for does not go with a resilient task, which retries "
            "on its own; list the exceptions in retry_on= (and give_up_on=) instead"
        )


class ResilientTask(Task[Any, Any]):
    """A Celery task that survives a flaky upstream.

    Every option is a class attribute (or a keyword of
    [`resilient_task`][celery_resilience.resilient_task], or of
    ``app.task(base=ResilientTask, ...)``), checked when the task is declared:

    - ``breaker``: a [`CircuitBreaker`][celery_resilience.CircuitBreaker] shared by every
      task naming it (default ``None``);
    - ``limiter``: a [`RateLimit`][celery_resilience.RateLimit], exact across the cluster
      (``None``);
    - ``concurrency``: a [`ConcurrencyLimit`][celery_resilience.ConcurrencyLimit], bodies in
      flight, cluster-wide (``None``);
    - ``max_retries``: retries after failures; deferrals by a gate do not count (``5``);
    - ``deadline``: seconds from the first attempt after which the task gives up (``None``);
    - ``backoff``: any tenacity wait strategy, the countdown after failure *n* (full
      jitter, 1 s to 60 s);
    - ``classifier``: ``callable(exc)`` returning a [`Verdict`][celery_resilience.Verdict]
      or ``None``, asked before the defaults (``None``);
    - ``retry_on``: exception classes always retried, as transient (``()``);
    - ``give_up_on``: exception classes never retried, as permanent (``()``);
    - ``on_open``: what to do when the breaker refuses: ``"defer"``, ``"fail"``, or a
      callable returning a fallback result, called with the task's arguments
      (``"defer"``);
    - ``policy``: the name of a policy in ``resilience_policies`` (``None``).

    A task that names a ``policy`` takes the policy's options, then its own explicit
    options over them, then the run-time overrides of the policy over both.

    Subclass it for class-based tasks:

    ```python
    class SyncCustomer(ResilientTask):
        breaker = CircuitBreaker("crm")
        limiter = RateLimit("crm", "10/s")

        def run(self, customer_id):
            resp = self.http.put(f"https://crm.example/customers/{customer_id}")
            resp.raise_for_status()

    sync_customer = app.register_task(SyncCustomer())
    ```
    """

    breaker: CircuitBreaker | None = None
    limiter: RateLimit | None = None
    concurrency: ConcurrencyLimit | None = None
    max_retries: int | None = DEFAULTS.max_retries
    deadline: float | None = None
    backoff: Callable[..., Any] = DEFAULTS.backoff
    classifier: Classifier | None = None
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ()
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] = ()
    on_open: OnOpen = DEFAULTS.on_open
    policy: str | None = None
    #: Celery's task strategy, with rate-limit slots reserved as messages arrive.
    Strategy = "celery_resilience.integration.strategy:resilient"
    #: Celery's request, which gives back the attempt lease of a lost pool process (a task
    #: with a ``Request`` of its own derives it from this one).
    Request = "celery_resilience.integration.lost:LostWorkerRequest"
    #: The options set by the task itself (not inherited from ResilientTask's defaults).
    explicit_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        wire()
        owner = cls.__dict__.get("name") or f"{cls.__module__}.{cls.__qualname__}"
        refuse_autoretry(owner, cls.__dict__)
        checked = check_options(owner, {name: getattr(cls, name) for name in OPTION_NAMES})
        cls.explicit_options = frozenset(
            name
            for klass in cls.__mro__
            if klass is not ResilientTask and issubclass(klass, ResilientTask)
            for name in OPTION_NAMES
            if name in klass.__dict__
        )
        for name in OPTION_NAMES:
            if name not in cls.__dict__:
                continue
            value = getattr(checked, name)
            # A plain function as a class attribute would bind to the task: keep it as is.
            setattr(
                cls, name, staticmethod(value) if isinstance(value, types.FunctionType) else value
            )
        if isinstance(cls.__dict__.get("name"), str):
            resilient_task_names.add(cls.__dict__["name"])

    @classmethod
    def bind(cls, app: Any) -> Any:
        """Bind to ``app`` (Celery calls this on registration); remember the task's name."""
        bound = super().bind(app)
        if isinstance(cls.name, str):
            resilient_task_names.add(cls.name)
        return bound

    def resilience_options(self, *, overrides: bool = True) -> TaskOptions:
        """The options in force for the attempt about to run (a frozen value).

        With a named ``policy``, the policy and (``overrides=True``) its run-time overrides
        from Redis take part; eager mode reads the configuration only.
        """
        # read once per task in this process (the options are checked and fixed at
        # declaration); a named policy's overrides come from the book, by version
        own: TaskOptions | None = self.__dict__.get("_resilience_own")
        if own is None:
            own = self.__dict__["_resilience_own"] = options_from(self)
        if own.policy is None:
            return own
        book = runtime_for(self.app).policies if overrides else config_book(self.app)
        return book.options(own.policy, own, self.explicit_options)

    @property
    def http(self) -> ResilientSession:
        """This process's HTTP session: pooled, with a default timeout, ``traceparent`` on
        every request and an ``Idempotency-Key`` on POST and PATCH, stable across retries."""
        return session_for_process()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.called_directly:
            # A plain function call (``task(...)``): no queue to retry through.
            return super().__call__(*args, **kwargs)
        try:
            if request.is_eager:
                return run_eager(self, request, args, kwargs)
            return run_in_worker(self, request, args, kwargs)
        except Exception as exc:
            # Whatever leaves the attempt (the body's error, a Retry whose context is the
            # failure it retries, GaveUp) reaches the result backend, Flower and the
            # worker's log with its chain: one redaction, here, for all of them.
            clean = redact_exception(exc)
            if clean is exc:
                raise
            raise clean from clean.__cause__


def resilient_tasks(app: Any) -> dict[str, ResilientTask]:
    """The resilient tasks registered on ``app``, by name, in name order."""
    return {
        name: task for name, task in sorted(app.tasks.items()) if isinstance(task, ResilientTask)
    }
