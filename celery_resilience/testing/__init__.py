"""Testing resilient tasks with pytest: an eager app, a fake clock, the attempts recorded.

Installing celery-resilience registers the pytest plugin
(:mod:`celery_resilience.testing.plugin`); it applies nothing by itself, and its fixtures
work only where a test asks for them:

``resilience_app``       a fresh Celery app in eager mode (:func:`eager_app`)
``resilience_seed``      the jitter's seed (``0``; override the fixture to change it)
``resilience_clock``     the :class:`FakeClock` of ``resilience_app``'s gates
``resilience_attempts``  an open :class:`Attempts` recorder, with its ``assert_*`` helpers
                         and :meth:`Attempts.step` (one attempt at a time)

Importing this package imports neither pytest nor anything that needs it.
"""

from __future__ import annotations

from celery_resilience.testing.attempts import AttemptRecord, Attempts, DecisionName
from celery_resilience.testing.eager import FROZEN_AT, FakeClock, eager_app
from celery_resilience.testing.steps import TaskSteps

__all__ = [
    "FROZEN_AT",
    "AttemptRecord",
    "Attempts",
    "DecisionName",
    "FakeClock",
    "TaskSteps",
    "eager_app",
]
