"""Fixtures for the example's tests: its own app in eager mode, and a local billing API.

The plugin's ``resilience_app`` is a fresh app; overriding it with ``eager_app`` makes the
plugin's fixtures (``resilience_clock``, ``resilience_attempts``) work on this project's
app, whose tasks are declared at import.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_resilience.testing import eager_app
from example_project import tasks
from example_project.app import app
from example_project.upstream import Upstream


@pytest.fixture
def resilience_app(resilience_seed: int) -> Iterator[Celery]:
    """The example's app, in eager mode for the test, with fresh in-memory gates."""
    with eager_app(app, seed=resilience_seed) as eager:
        yield eager


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    """A real HTTP server on 127.0.0.1 standing in for the billing and CRM APIs."""
    with Upstream() as server:
        monkeypatch.setattr(tasks, "UPSTREAM_URL", server.url)
        yield server
