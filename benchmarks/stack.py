"""The private servers and worker nodes of one reliability run, stopped by PID at the end.

A broker (a Redis of its own, optionally with an append-only file or an ACL user for the
workers, or a private RabbitMQ node), a Redis for the result backend, and a state store (a
Redis, or a three-node Redis Cluster), all started by the test helpers in
``tests/helpers``; worker nodes of :mod:`benchmarks.apps.reliable` (prefork, sending task
events), replaced as a process supervisor would when one exits, and Flower watching them::

    with running(workdir, spec, secret=s) as stack:
        stack.start_nodes(2)
        ids = stack.send([(key, url), ...])
        states = stack.drain(ids, timeout=60)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from benchmarks.apps.config import ENV_BACKEND, ENV_BROKER, ENV_CONF, ENV_STATE
from benchmarks.apps.reliable import ENV_SECRET
from tests.helpers import REPO_ROOT
from tests.helpers.celery_apps import make_app
from tests.helpers.flower import FlowerProcess
from tests.helpers.processes import has_exited
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_cluster import RedisCluster
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker, stop_workers

__all__ = ["APP", "QUEUE", "TASK", "TERMINAL", "Spec", "Stack", "running"]

APP = "benchmarks.apps.reliable"
TASK = "bench.reliable.charge"
QUEUE = "reliable"
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: The broker's user the workers log in as when ``Spec.acl`` is set (the benchmark
#: itself publishes as the default user, whom the fault never touches).
WORKER_USER, WORKER_PASSWORD = "worker", "worker-pw"
_AOF = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass(frozen=True)
class Spec:
    """What a run is made of: broker kind, state store kind, and the workers' settings."""

    broker: str = "redis"  # or "amqp"
    state: str = "redis"  # or "cluster"
    aof: bool = False
    acl: bool = False
    conf: dict[str, Any] = field(default_factory=dict)


class Stack:
    """Servers and workers of one run (see the module's docstring)."""

    def __init__(self, workdir: Path, spec: Spec, *, secret: str) -> None:
        self.workdir = workdir
        self.spec = spec
        self.secret = secret
        self.broker: RedisServer | RabbitMQNode
        self.results = RedisServer(workdir / "results")
        self.state: RedisServer | RedisCluster
        self.workers: list[CeleryWorker] = []
        self.flower: FlowerProcess | None = None
        self.replaced = 0
        self._gone: set[int] = set()
        self._client: Celery | None = None

    # -- life ----------------------------------------------------------------------------

    def start(self) -> Stack:
        """Start the servers (not the workers)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.spec.broker == "amqp":
            self.broker = RabbitMQNode(self.workdir / "rabbitmq").start()
        else:
            extra = _AOF if self.spec.aof else ()
            self.broker = RedisServer(self.workdir / "broker", extra_args=extra).start()
            if self.spec.acl:
                with self.broker.client() as admin:
                    admin.acl_setuser(
                        WORKER_USER, enabled=True, passwords=[f"+{WORKER_PASSWORD}"],
                        keys=["*"], channels=["*"], commands=["+@all"],
                    )  # fmt: skip
        self.results.start()
        # named before it starts, so that stop() also stops a server that failed midway
        if self.spec.state == "cluster":
            self.state = RedisCluster(self.workdir / "cluster")
        else:
            self.state = RedisServer(self.workdir / "state")
        self.state.start()
        return self

    def stop(self) -> None:
        """Stop the workers, then every server (by PID)."""
        try:
            if self.flower is not None:
                self.flower.stop()
            stop_workers(self.workers)
        finally:
            if self._client is not None:
                self._client.close()
            # a start that failed midway has not named every server
            for name in ("state", "results", "broker"):
                server = getattr(self, name, None)
                if server is not None:
                    server.stop()

    # -- where things are ----------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker as the benchmark (an admin) reaches it."""
        if isinstance(self.broker, RabbitMQNode):
            return self.broker.url
        return self.broker.url(0)

    @property
    def worker_broker_url(self) -> str:
        """The broker as the workers reach it (as the ACL user when ``Spec.acl``)."""
        if isinstance(self.broker, RedisServer) and self.spec.acl:
            return f"redis://{WORKER_USER}:{WORKER_PASSWORD}@127.0.0.1:{self.broker.port}/0"
        return self.broker_url

    @property
    def state_url(self) -> str:
        """The state store's URL."""
        if isinstance(self.state, RedisCluster):
            return self.state.url()
        return self.state.url(0)

    def env(self) -> dict[str, str]:
        """The environment of a worker (and of the CLI)."""
        return {
            ENV_BROKER: self.worker_broker_url,
            ENV_BACKEND: self.results.url(0),
            ENV_STATE: self.state_url,
            ENV_CONF: json.dumps(
                {"task_default_queue": QUEUE, "worker_send_task_events": True, **self.spec.conf}
            ),
            ENV_SECRET: self.secret,
        }

    @property
    def client(self) -> Celery:
        """A client app on the broker (as an admin) and the result backend."""
        if self._client is None:
            self._client = make_app(
                "bench-reliable-client", broker=self.broker_url, backend=self.results.url(0),
                queue=QUEUE, set_as_current=False,
            )  # fmt: skip
        return self._client

    # -- workers -------------------------------------------------------------------------

    def start_nodes(self, count: int, *, concurrency: int = 2) -> list[CeleryWorker]:
        """Start ``count`` worker nodes and wait until each answers a ping."""
        started = [self._worker(concurrency) for _ in range(count)]
        for worker in started:
            worker.start()
        for worker in started:
            worker.wait_ready(self.client, timeout=60.0)
        return started

    def start_flower(self) -> FlowerProcess:
        """Start Flower on the broker; the workers send task events to it."""
        self.flower = FlowerProcess(APP, env=self.env(), logfile=self.workdir / "flower.log")
        return self.flower.start()

    def _worker(self, concurrency: int) -> CeleryWorker:
        name = f"node{len(self.workers) + 1}"
        worker = CeleryWorker(
            APP, name, env=self.env(), logfile=self.workdir / f"{name}.log",
            concurrency=concurrency, queues=[QUEUE],
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def supervise(self) -> None:
        """Start a node in place of each that exited (as a process supervisor would)."""
        for worker in list(self.workers):
            if worker.pid in self._gone or not has_exited(worker.pid):
                continue
            self._gone.add(worker.pid)
            self.replaced += 1
            self._worker(worker.concurrency).start()

    def kill_node(self, worker: CeleryWorker) -> None:
        """SIGKILL a node and its pool at once (a machine lost); it is not replaced."""
        self._gone.add(worker.pid)
        worker.kill()

    def logs(self) -> str:
        """Every worker's log, one after the other."""
        return "\n".join(w.log_text() for w in self.workers)

    # -- tasks ---------------------------------------------------------------------------

    def send(self, calls: Sequence[tuple[str, str]]) -> list[str]:
        """Send one task per ``(key, url)``; return the task IDs."""
        with self.client.producer_or_acquire() as producer:
            return [
                self.client.send_task(TASK, args=list(call), producer=producer).id for call in calls
            ]

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """Each task's state in the result backend (``PENDING`` without one)."""
        with self.results.client() as backend:
            raw = backend.mget([f"celery-task-meta-{i}" for i in ids]) if ids else []
        return {
            task_id: json.loads(value)["status"] if value else "PENDING"
            for task_id, value in zip(ids, raw, strict=True)
        }

    def drain(self, ids: Sequence[str], *, timeout: float) -> dict[str, str]:
        """Wait (bounded) until every task has a final state, replacing exited nodes."""
        deadline = time.monotonic() + timeout
        while True:
            self.supervise()
            states = self.states(ids)
            if all(s in TERMINAL for s in states.values()) or time.monotonic() >= deadline:
                return states
            time.sleep(0.5)

    def backend_text(self) -> str:
        """Every value the result backend holds, as text."""
        with self.results.client() as backend:
            keys = list(backend.scan_iter(count=1000))
            values = backend.mget(keys) if keys else []
        return "\n".join(v.decode("utf-8", "replace") for v in values if v is not None)

    def broker_facts(self) -> dict[str, Any]:
        """What kombu's Redis transport holds after the drain: messages waiting, delivered
        and unacknowledged, and its restore mutex (``{}`` for RabbitMQ or when unreadable)."""
        if not isinstance(self.broker, RedisServer):
            return {}
        try:
            with self.broker.client() as broker:
                return {
                    "queued": int(broker.llen(QUEUE)),
                    "unacked": int(broker.hlen("unacked")),
                    "unacked_mutex_ttl": int(broker.ttl("unacked_mutex")),
                }
        except redis.RedisError as exc:
            return {"unreadable": repr(exc)}

    def state_client(self) -> redis.Redis | redis.RedisCluster:
        """A client of the state store (close it when done)."""
        from celery_resilience.state.connect import connect  # noqa: PLC0415

        return connect(self.state_url)

    def cli(self, *args: str) -> str:
        """``celery -A benchmarks.apps.reliable resilience <args>``: its output, both streams."""
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", APP, "resilience", *args],
            env={**os.environ, **self.env(), "PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return f"{done.stdout}\n{done.stderr}"


@contextlib.contextmanager
def running(workdir: Path, spec: Spec, *, secret: str) -> Iterator[Stack]:
    """A started :class:`Stack`, stopped (by PID) on the way out."""
    stack = Stack(workdir, spec, secret=secret)
    try:
        yield stack.start()
    finally:
        stack.stop()
