"""The configuration both benchmark apps share: JSON only, URLs from the environment.

=================  ===========================================================
variable           meaning
=================  ===========================================================
``BENCH_BROKER``   the Redis broker
``BENCH_BACKEND``  the result backend (tasks whose outcome the benchmark reads)
``BENCH_STATE``    celery-resilience's shared state (a Redis of its own, so that
                   its ``INFO commandstats`` count nothing else)
``BENCH_CONF``     optional: more app settings, a JSON object (a worker of one
                   variant, e.g. ``{"resilience_park_after": 0}``)
``BENCH_PRERUN``   optional: ``1`` logs ``bench-prerun <task id>`` (WARNING) at
                   every ``task_prerun``, so that deliveries can be counted
=================  ===========================================================
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import task_prerun

__all__ = [
    "ENV_BACKEND",
    "ENV_BROKER",
    "ENV_CONF",
    "ENV_PRERUN",
    "ENV_STATE",
    "PRERUN_MARK",
    "Urls",
    "configure",
    "make_app",
]

ENV_BROKER = "BENCH_BROKER"
ENV_BACKEND = "BENCH_BACKEND"
ENV_STATE = "BENCH_STATE"
ENV_CONF = "BENCH_CONF"
ENV_PRERUN = "BENCH_PRERUN"
#: What a worker logs at each ``task_prerun`` when ``BENCH_PRERUN=1``, before the task ID.
PRERUN_MARK = "bench-prerun"
_UNSET = "redis://127.0.0.1:1/0"  # nothing listens there: a worker without env fails loudly


@dataclass(frozen=True)
class Urls:
    """Where the apps find their Redis servers."""

    broker: str
    backend: str
    state: str

    def env(self) -> dict[str, str]:
        """The environment a worker process reads them from."""
        return {ENV_BROKER: self.broker, ENV_BACKEND: self.backend, ENV_STATE: self.state}

    @classmethod
    def from_env(cls) -> Urls:
        """The URLs in this process's environment (placeholders where unset)."""
        get = os.environ.get
        return cls(get(ENV_BROKER, _UNSET), get(ENV_BACKEND, _UNSET), get(ENV_STATE, _UNSET))


def configure(app: Celery, urls: Urls) -> None:
    """Point ``app`` at ``urls`` (before it first connects)."""
    app.conf.update(
        broker_url=urls.broker,
        result_backend=urls.backend,
        resilience_backend_url=urls.state,
    )


def make_app(main: str) -> Celery:
    """An app with the settings both sides share, configured from the environment."""
    app = Celery(main)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        worker_hijack_root_logger=True,
    )
    configure(app, Urls.from_env())
    extra = os.environ.get(ENV_CONF)
    if extra:
        app.conf.update(json.loads(extra))
    if os.environ.get(ENV_PRERUN) == "1":
        task_prerun.connect(_log_prerun, weak=False)
    return app


_prerun_log = logging.getLogger("benchmarks.deliveries")


def _log_prerun(task_id: str | None = None, **_: Any) -> None:
    """One line per delivery that reaches a pool process (``task_prerun``)."""
    _prerun_log.warning("%s %s", PRERUN_MARK, task_id)
