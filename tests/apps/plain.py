"""A plain Celery app (no celery_resilience), configured from the environment.

The baseline the rig runs: one task that GETs ``UPSTREAM_URL + path`` and returns the
status code. Variables: see :mod:`tests.helpers.celery_apps`.
"""

from __future__ import annotations

import os

import requests

from tests.helpers.celery_apps import ENV_UPSTREAM, app_from_env

app = app_from_env("plain")


@app.task(name="plain.fetch")
def fetch(path: str = "/") -> int:
    """GET ``UPSTREAM_URL + path`` and return the status code."""
    return requests.get(os.environ[ENV_UPSTREAM] + path, timeout=10).status_code
