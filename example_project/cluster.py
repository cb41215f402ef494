"""The demo's little cluster: worker nodes and Flower, started and stopped by PID.

Every process gets its configuration through the ``EXAMPLE_*`` variables that
:mod:`example_project.app` reads, so the demo's workers are the same command a reader
runs by hand (see docs/running.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from example_project.embedded_redis import free_port
from example_project.processes import Child, Children

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["Cluster", "ClusterError", "delete_namespace", "python_path_env"]

APP = "example_project.app"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ClusterError(RuntimeError):
    """A worker or Flower did not start."""


def python_path_env() -> dict[str, str]:
    """``PYTHONPATH`` with the project root first, so children import example_project."""
    parts = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(parts)}


def celery_command(*args: str) -> list[str]:
    """``python -m celery -A example_project.app <args>``."""
    return [sys.executable, "-m", "celery", "-A", APP, *args]


@dataclass
class Cluster:
    """Worker nodes (prefork) and, when installed, Flower."""

    children: Children
    env: dict[str, str]
    namespace: str
    workers: list[Child] = field(default_factory=list)
    nodenames: list[str] = field(default_factory=list)
    flower: Child | None = None
    flower_url: str | None = None

    def start_workers(self, count: int, *, concurrency: int, queues: list[str]) -> None:
        """Start ``count`` worker nodes consuming ``queues``."""
        from celery.utils.nodenames import host_format  # noqa: PLC0415 - after env is set

        for i in range(1, count + 1):
            name = f"{self.namespace}-{i}@%h"
            command = celery_command(
                "worker", "-P", "prefork", "-c", str(concurrency), "-n", name,
                "-Q", ",".join(queues), "--without-gossip", "--without-mingle",
                "--loglevel=INFO", f"--logfile={self.children.logdir / f'worker-{i}.log'}",
            )
            self.workers.append(self.children.start(f"worker-{i}", command, env=self.env))
            self.nodenames.append(str(host_format(name)))

    def start_flower(self) -> bool:
        """Start Flower on a free port, if it is installed; return whether it was."""
        if importlib.util.find_spec("flower") is None:
            return False
        port = free_port()
        command = celery_command("flower", f"--port={port}", "--address=127.0.0.1")
        self.flower = self.children.start("flower", command, env=self.env)
        self.flower_url = f"http://127.0.0.1:{port}"
        return True

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> None:
        """Wait (bounded) until every worker answers ping; raise ClusterError if not."""
        waiting = set(self.nodenames)
        deadline = time.monotonic() + timeout
        with app.connection_for_write() as connection:
            while waiting and time.monotonic() < deadline:
                for child in self.workers:
                    if not child.running():
                        raise ClusterError(f"{child.name} exited:\n{child.tail()}")
                replies = app.control.ping(
                    destination=sorted(waiting), timeout=0.5, connection=connection
                )
                for reply in replies or []:
                    waiting -= set(reply)
        if waiting:
            raise ClusterError(f"no answer from {', '.join(sorted(waiting))} in {timeout:g} s")

    def wait_flower(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until Flower answers its health check."""
        if self.flower is None or self.flower_url is None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.flower.running():
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.flower_url}/healthcheck", timeout=1).ok:
                    return True
            time.sleep(0.2)
        return False

    def pool_pids(self, app: Celery) -> list[int]:
        """The pool processes of the workers (from ``inspect stats``)."""
        stats = _stats(app, self.nodenames)
        return [pid for node in stats.values() for pid in node.get("pool", {}).get("processes", [])]

    def stop(self, timeout: float = 15.0) -> None:
        """Warm-stop the workers and Flower (then kill what is left of them)."""
        self.children.stop_all(timeout)


def _stats(app: Celery, nodenames: list[str] | None) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        found = app.control.inspect(timeout=1.5, destination=nodenames or None).stats()
        return dict(found or {})
    return {}


def resilience_counters(app: Celery, nodenames: list[str] | None) -> dict[str, int] | None:
    """celery-resilience's counters summed over the nodes (``inspect stats``), if reported."""
    totals: dict[str, int] = {}
    for node in _stats(app, nodenames).values():
        counters = node.get("resilience", {}).get("counters")
        if not isinstance(counters, dict):
            continue
        for key, value in counters.items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    return totals or None


def delete_namespace(redis_url: str, namespace: str) -> int:
    """Delete every key of the demo's namespace (``<namespace>:*``); return how many."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def delete_amqp_entities(broker_url: str, namespace: str, queues: list[str]) -> None:
    """Delete the demo's queues and exchanges on an AMQP broker (best effort)."""
    import kombu  # noqa: PLC0415

    exchanges = [*queues, f"{namespace}.events", f"{namespace}.control.pidbox",
                 f"reply.{namespace}.control.pidbox"]
    with kombu.Connection(broker_url, connect_timeout=5) as connection:
        # a fresh channel for each: the broker closes a channel that names a missing entity
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                with contextlib.suppress(Exception):
                    channel: Any = connection.channel()
                    getattr(channel, f"{kind}_delete")(name)
                    channel.close()
