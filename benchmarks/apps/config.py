"""The configuration both benchmark apps share: JSON only, URLs from the environment.

=================  ===========================================================
variable           meaning
=================  ===========================================================
``BENCH_BROKER``   the Redis broker
``BENCH_BACKEND``  the result backend (tasks whose outcome the benchmark reads)
``BENCH_STATE``    celery-resilience's shared state (a Redis of its own, so that
                   its ``INFO commandstats`` count nothing else)
=================  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from celery import Celery

__all__ = ["ENV_BACKEND", "ENV_BROKER", "ENV_STATE", "Urls", "configure", "make_app"]

ENV_BROKER = "BENCH_BROKER"
ENV_BACKEND = "BENCH_BACKEND"
ENV_STATE = "BENCH_STATE"
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
    return app
