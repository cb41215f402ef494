"""Plain Celery, written as a competent user would: the baseline of every scenario.

Transient answers (429, 5xx) and connection errors or timeouts are retried through
``autoretry_for`` with exponential backoff and full jitter (capped at 60 s, the same cap
as celery-resilience's default backoff), ``max_retries=8``; any other 4xx fails at once.
``rate_limit`` is Celery's own, enforced per worker node. ``call_naive`` is the common
shortcut (``raise_for_status`` under ``autoretry_for=HTTPError``), which retries 4xx too.
"""

from __future__ import annotations

from typing import Any

import requests

from benchmarks.apps.config import make_app

__all__ = ["app", "call", "call_limited", "call_naive", "noop"]

app = make_app("bench_plain")

RETRY: dict[str, Any] = {
    "autoretry_for": (requests.ConnectionError, requests.Timeout, requests.HTTPError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
}

_session = requests.Session()


class RejectedError(Exception):
    """The upstream refused the request for good (a 4xx other than 429): not retried."""


def _get(url: str) -> int:
    resp = _session.get(url, timeout=5)
    status = resp.status_code
    if status == 429 or status >= 500:
        resp.raise_for_status()  # HTTPError: retried
    if status >= 400:
        raise RejectedError(f"HTTP {status} from {url}")
    return status


@app.task(name="bench.plain.call", **RETRY)
def call(url: str) -> int:
    """GET ``url``; retry transient failures."""
    return _get(url)


@app.task(name="bench.plain.call_limited", rate_limit="10/s", **RETRY)
def call_limited(url: str) -> int:
    """GET ``url`` at most 10 times a second (per worker node: Celery's ``rate_limit``)."""
    return _get(url)


@app.task(name="bench.plain.call_naive", **RETRY)
def call_naive(url: str) -> int:
    """GET ``url`` the short way: ``raise_for_status`` (every 4xx is retried too)."""
    resp = _session.get(url, timeout=5)
    resp.raise_for_status()
    return resp.status_code


@app.task(name="bench.plain.noop", ignore_result=True)
def noop() -> None:
    """Do nothing (throughput of the bare task machinery)."""
