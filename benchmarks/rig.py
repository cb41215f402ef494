"""The benchmark rig: two private Redis servers, the upstream, and Celery worker nodes.

One Redis is the broker (db 0) and the result backend (db 1); the other holds only
celery-resilience's shared state, so that its ``INFO commandstats`` count the library's
round trips and nothing else. Every process is ours, started in its own session and
stopped by PID; every wait is bounded::

    with Rig(workdir) as rig:
        with rig.nodes(SIDES["plain"], "q", count=2, concurrency=2) as nodes:
            ids = rig.publish(plain.call, [(url,)], queue="q")
            states = rig.wait_done(ids, timeout=60)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from celery import Celery

from benchmarks.apps import plain, resilient
from benchmarks.apps.config import Urls, configure
from example_project.embedded_redis import EmbeddedRedis
from example_project.processes import Child
from example_project.upstream import RequestRecord, Upstream

__all__ = ["SIDES", "Node", "Rig", "RigError", "Side", "cpu_seconds", "rss_kib"]

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
_TICKS = os.sysconf("SC_CLK_TCK")


class RigError(RuntimeError):
    """A process of the rig did not start or answer in time."""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its app (as a worker's ``-A``) and the app object."""

    key: str
    title: str
    module: str
    app: Celery


SIDES = {
    "plain": Side("plain", "plain Celery", "benchmarks.apps.plain", plain.app),
    "resilient": Side("resilient", "celery-resilience", "benchmarks.apps.resilient", resilient.app),
}


def _stats() -> Iterator[tuple[int, list[str]]]:
    """Every process's /proc stat fields after its name (state, ppid, pgrp, session, ...)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            yield int(entry.name), stat.rsplit(")", 1)[1].split()


def _processes() -> list[tuple[int, int]]:
    """(pid, session id) of every living process."""
    return [(pid, int(f[3])) for pid, f in _stats() if f[0] not in ("Z", "X")]


def _children(pid: int) -> list[int]:
    return sorted(p for p, f in _stats() if f[1] == str(pid) and f[0] not in ("Z", "X"))


def rss_kib(pid: int) -> int | None:
    """A process's resident set (``VmRSS``) in KiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time that ``pids`` have used so far, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


class Node:
    """One ``celery worker`` node (prefork) of a side."""

    def __init__(self, child: Child, nodename: str) -> None:
        self.child = child
        self.nodename = nodename

    @property
    def pid(self) -> int:
        """The main process's PID."""
        if self.child.pid is None:
            raise RigError(f"{self.nodename} was not started")
        return self.child.pid

    def pool_pids(self) -> list[int]:
        """The pool's child processes."""
        return _children(self.pid)

    def pool_rss_kib(self) -> list[int]:
        """``VmRSS`` of every pool child, in KiB."""
        return [r for r in (rss_kib(p) for p in self.pool_pids()) if r is not None]


class Rig:
    """Redis servers and the upstream for one benchmark run; logs under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = EmbeddedRedis()
        self.state = EmbeddedRedis()
        self.upstream = Upstream()
        self._started = 0
        self._sessions: set[int] = set()

    # -- life ----------------------------------------------------------------------------

    def start(self) -> Rig:
        """Start both Redis servers and the upstream; point the apps at them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.state.start()
        self.upstream.start()
        self.urls = Urls(self.broker.url(0), self.broker.url(1), self.state.url(0))
        for side in SIDES.values():
            configure(side.app, self.urls)
        self.broker_client = redis.Redis.from_url(self.broker.url(0))
        self.results_client = redis.Redis.from_url(self.broker.url(1))
        self.state_client = redis.Redis.from_url(self.state.url(0))
        return self

    def stop(self) -> None:
        """Stop everything the rig started (by PID)."""
        for side in SIDES.values():
            side.app.close()
        self.upstream.stop()
        self.state.stop()
        self.broker.stop()
        left = [pid for pid, sid in _processes() if sid in self._sessions]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            print(f"warning: killed {len(left)} stray process(es): {left}", file=sys.stderr)

    def __enter__(self) -> Rig:
        """Start the rig."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the rig."""
        self.stop()

    @contextlib.contextmanager
    def upstream_paused(self) -> Iterator[None]:
        """The upstream stopped for a while, then served again on the same port: for a
        loop measured in this process, which the upstream's serving thread would otherwise
        slow down and make noisy (a thread waiting for the GIL is woken each time the
        loop lets it go, and those wake-ups are billed to this process)."""
        self.upstream.stop()
        try:
            yield
        finally:
            self.upstream.start()

    def reset(self) -> None:
        """Forget every queue, result and breaker/limiter state, and the upstream's records."""
        self.broker_client.flushall()
        self.state_client.flushall()
        self.upstream.reset()

    # -- workers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def nodes(
        self,
        side: Side,
        queue: str,
        *,
        count: int,
        concurrency: int,
        loglevel: str = "WARNING",
        ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[list[Node]]:
        """Run ``count`` worker nodes of ``side`` on ``queue``, each with ``concurrency``
        prefork processes; stop them (by PID) on the way out. ``ready``: wait until every
        node answers a ping before going on. ``env``: more environment for the workers
        (see :mod:`benchmarks.apps.config`)."""
        started: list[Node] = []
        try:
            for _ in range(count):
                self._started += 1
                name = f"{side.key}{self._started}"
                command = [
                    sys.executable, "-m", "celery", "-A", side.module, "worker",
                    "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@bench",
                    "-Q", queue, f"--loglevel={loglevel}",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ]  # fmt: skip
                environ = {**self.urls.env(), **(env or {}), "PYTHONPATH": str(ROOT)}
                child = Child(name, command, env=environ, logfile=self.workdir / f"{name}.log")
                started.append(Node(child.start(cwd=ROOT), f"{name}@bench"))
                self._sessions.add(started[-1].pid)
            if ready:
                self._wait_ready(side.app, started)
            yield started
        finally:
            for node in started:
                node.child.terminate()
            for node in started:
                node.child.stop(timeout=15.0)

    def _wait_ready(self, app: Celery, nodes: list[Node], timeout: float = 60.0) -> None:
        waiting = {n.nodename: n for n in nodes}
        deadline = time.monotonic() + timeout
        with app.connection_for_write() as connection:
            while waiting and time.monotonic() < deadline:
                for node in waiting.values():
                    if not node.child.running():
                        raise RigError(f"{node.nodename} exited:\n{node.child.tail()}")
                replies = app.control.ping(
                    destination=list(waiting), timeout=0.5, connection=connection
                )
                for reply in replies or []:
                    for name in reply:
                        waiting.pop(name, None)
        if waiting:
            node = next(iter(waiting.values()))
            raise RigError(
                f"{node.nodename} did not answer within {timeout:g} s:\n{node.child.tail()}"
            )

    # -- tasks ---------------------------------------------------------------------------

    def publish(self, task: Any, calls: Sequence[tuple[Any, ...]], *, queue: str) -> list[str]:
        """Send ``task`` once per argument tuple to ``queue``; return the task IDs."""
        ids = []
        with task.app.producer_or_acquire() as producer:
            for args in calls:
                ids.append(task.apply_async(args, queue=queue, producer=producer).id)
        return ids

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """The result backend's state of each task (``PENDING`` when it has none yet)."""
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            raw = self.results_client.mget([f"celery-task-meta-{i}" for i in chunk])
            for task_id, value in zip(chunk, raw, strict=True):
                found[task_id] = json.loads(value)["status"] if value else "PENDING"
        return found

    def wait_done(self, ids: Sequence[str], *, timeout: float) -> dict[str, str]:
        """Wait (bounded) until every task is SUCCESS or FAILURE; return the states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(ids)
            if all(s in TERMINAL for s in states.values()) or time.monotonic() >= deadline:
                return states
            time.sleep(0.25)

    def records(self, prefix: str) -> list[RequestRecord]:
        """The upstream's records of requests under ``prefix`` (a path), in arrival order."""
        return [r for r in self.upstream.requests() if r.path.startswith(prefix + "/")]

    def redis_pids(self) -> list[int]:
        """The PIDs of both Redis servers."""
        return [p for p in (self.broker.pid, self.state.pid) if p is not None]

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a broker queue."""
        return int(self.broker_client.llen(queue))

    def state_commands(self) -> dict[str, int]:
        """``INFO commandstats`` of the state Redis: calls per command."""
        stats = self.state_client.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in stats.items()
            if isinstance(value, dict)
        }
