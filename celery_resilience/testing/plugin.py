"""The pytest plugin of celery-resilience (registered through the ``pytest11`` entry point).

Fixtures only: nothing here runs unless a test asks for one of them by name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_resilience.testing.attempts import Attempts
from celery_resilience.testing.eager import FakeClock, eager_app

__all__ = ["resilience_app", "resilience_attempts", "resilience_clock", "resilience_seed"]


@pytest.fixture
def resilience_seed() -> int:
    """The seed of the jitter in ``resilience_app`` (override this fixture to change it)."""
    return 0


@pytest.fixture
def resilience_app(resilience_seed: int) -> Iterator[Celery]:
    """A fresh Celery app in eager mode: no broker, no Redis, in-memory gates on a clock
    that stands still, seeded jitter, exceptions propagated to the caller.

    To test tasks declared on your own app, override it in ``conftest.py``::

        @pytest.fixture
        def resilience_app(resilience_seed):
            with eager_app(my_app, seed=resilience_seed) as app:
                yield app
    """
    app = Celery(
        "resilience-tests", broker="memory://", backend="cache+memory://", set_as_current=False
    )
    with eager_app(app, seed=resilience_seed):
        yield app
    app.close()


@pytest.fixture
def resilience_clock(resilience_app: Celery) -> FakeClock:
    """The clock of ``resilience_app``'s eager gates: read it, or move it on."""
    return FakeClock(resilience_app)


@pytest.fixture
def resilience_attempts() -> Iterator[Attempts]:
    """Every attempt of a resilient task during the test, with assertion helpers."""
    with Attempts().recording() as attempts:
        yield attempts
