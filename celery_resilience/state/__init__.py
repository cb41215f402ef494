"""Shared state for breakers, limiters and attempt leases: Redis, with a local fallback.

The values the stores exchange live in :mod:`celery_resilience.core.gates`.
"""

from celery_resilience.state.base import StateStore

__all__ = ["StateStore"]
