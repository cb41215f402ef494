"""The benchmarks' tasks made resilient: the twins of :mod:`benchmarks.apps.plain`.

``call`` uses the library's *default* breaker, ``CircuitBreaker("upstream")``, so that the
outage benchmark tells whether the defaults earn their place. ``SWEEP`` holds the breaker
settings the sweep compares; each has a task ``bench.sweep.<label>`` of its own.
"""

from __future__ import annotations

from benchmarks.apps.config import make_app
from celery_resilience import CircuitBreaker, RateLimit, ResilientTask, resilient_task

__all__ = [
    "SWEEP",
    "app",
    "call",
    "call_bulk",
    "call_limited",
    "call_ra",
    "call_tenant",
    "noop",
    "noop_gated",
    "sweep_label",
    "sweep_task_name",
]

app = make_app("bench_resilient")

#: The cap on a growing OPEN period in the sweep.
GROWTH_CAP = 60.0


def sweep_label(breaker: CircuitBreaker) -> str:
    """A short name for a breaker's settings: ``of5-mc10-grow``."""
    growth = "grow" if breaker.open_for_max is not None else "flat"
    return f"of{breaker.open_for:g}-mc{breaker.minimum_calls}-{growth}"


def sweep_task_name(breaker: CircuitBreaker) -> str:
    """The name of the sweep task that uses ``breaker``."""
    return f"bench.sweep.{sweep_label(breaker)}"


#: open_for in {2, 3, 5, 8} x minimum_calls in {5, 10} x with and without growth.
SWEEP: tuple[CircuitBreaker, ...] = tuple(
    CircuitBreaker(
        f"sweep-of{open_for:g}-mc{minimum}-{'grow' if grow else 'flat'}",
        open_for=open_for,
        minimum_calls=minimum,
        open_for_max=GROWTH_CAP if grow else None,
    )
    for open_for in (2.0, 3.0, 5.0, 8.0)
    for minimum in (5, 10)
    for grow in (False, True)
)


def _get(task: ResilientTask, url: str) -> int:
    resp = task.http.get(url, timeout=5)
    resp.raise_for_status()
    return resp.status_code


@resilient_task(
    app=app, bind=True, name="bench.resilient.call",
    breaker=CircuitBreaker("upstream"), max_retries=8,
)  # fmt: skip
def call(self: ResilientTask, url: str) -> int:
    """GET ``url`` behind the default breaker."""
    return _get(self, url)


@resilient_task(
    app=app, bind=True, name="bench.resilient.call_limited",
    limiter=RateLimit("api", "10/s"), max_retries=8,
)  # fmt: skip
def call_limited(self: ResilientTask, url: str) -> int:
    """GET ``url`` at most 10 times a second across the cluster."""
    return _get(self, url)


@resilient_task(
    app=app, bind=True, name="bench.resilient.call_bulk",
    limiter=RateLimit("bulk", "100/s"), max_retries=8,
)  # fmt: skip
def call_bulk(self: ResilientTask, url: str) -> int:
    """GET ``url`` at most 100 times a second across the cluster (the backlog case)."""
    return _get(self, url)


@resilient_task(
    app=app, bind=True, name="bench.resilient.call_ra",
    breaker=CircuitBreaker("ra"), limiter=RateLimit("ra", "50/s"), max_retries=8,
)  # fmt: skip
def call_ra(self: ResilientTask, url: str) -> int:
    """GET ``url`` behind a breaker and a limiter (a 429's Retry-After pauses the limiter)."""
    return _get(self, url)


def _tenant(args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    return args[1]


@resilient_task(
    app=app, bind=True, name="bench.resilient.call_tenant",
    limiter=RateLimit("tenant", "10/s", key=_tenant), max_retries=8,
)  # fmt: skip
def call_tenant(self: ResilientTask, url: str, tenant: str) -> int:
    """GET ``url`` at most 10 times a second per tenant, across the cluster."""
    return _get(self, url)


@resilient_task(app=app, name="bench.resilient.noop", ignore_result=True)
def noop() -> None:
    """Do nothing: the cost of the attempt flow without breaker or limiter."""


@resilient_task(
    app=app, name="bench.resilient.noop_gated", ignore_result=True,
    breaker=CircuitBreaker("noop"), limiter=RateLimit("noop", "100000/s", burst=100_000),
)  # fmt: skip
def noop_gated() -> None:
    """Do nothing behind a breaker and a limiter that never says no."""


def _sweep_task(breaker: CircuitBreaker) -> ResilientTask:
    def run(self: ResilientTask, url: str) -> int:
        return _get(self, url)

    run.__doc__ = f"GET ``url`` behind {breaker!r}."
    return resilient_task(
        app=app, bind=True, name=sweep_task_name(breaker), breaker=breaker, max_retries=8
    )(run)


sweep_tasks: dict[str, ResilientTask] = {
    sweep_label(breaker): _sweep_task(breaker) for breaker in SWEEP
}
