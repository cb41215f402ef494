"""Real ``celery worker`` processes for integration tests.

A :class:`CeleryWorker` runs in its own process group with its own log file; it is stopped
by PID (warm shutdown, then SIGKILL to the group), never by name::

    worker = CeleryWorker("tests.apps.plain", "w1", env=env, logfile=tmp_path / "w1.log")
    worker.start().wait_ready()
    ...
    worker.stop()
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from celery import Celery
from celery.utils.nodenames import host_format

from tests.helpers import REPO_ROOT
from tests.helpers.celery_apps import ENV_BROKER
from tests.helpers.polling import wait_until
from tests.helpers.processes import (
    LoggedProcess,
    child_pids,
    has_exited,
    kill_group,
    pid_alive,
    tail,
    wait_exited,
)


class WorkerError(RuntimeError):
    """A worker did not start, or did not answer in time."""


class CeleryWorker(LoggedProcess):
    """One ``celery -A <app> worker`` node named ``<name>@<host>``.

    ``env`` is merged over ``os.environ``; ``PYTHONPATH`` starts with the repository root so
    that ``tests.apps.*`` import. ``queues`` become ``-Q``; ``extra_args`` are appended.
    """

    def __init__(
        self,
        app: str,
        name: str,
        *,
        env: Mapping[str, str],
        logfile: Path,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.name = name
        self.env = dict(env)
        self._logfile = logfile
        self.concurrency = concurrency
        self.pool = pool
        self.queues = list(queues or [])
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def logfile(self) -> Path:
        """The worker's ``--logfile``, which also receives its stdout and stderr."""
        return self._logfile

    @property
    def nodename(self) -> str:
        """The full node name, as ``control.ping`` reports it (``name@host``)."""
        return str(host_format(f"{self.name}@%h"))

    @property
    def pid(self) -> int:
        """The worker's main process ID."""
        if self._process is None:
            raise WorkerError(f"worker {self.name} was not started")
        return self._process.pid

    @property
    def command(self) -> list[str]:
        """The command line the worker runs with."""
        command = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "--loglevel=INFO", f"--logfile={self.logfile}",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if self.queues:
            command += ["-Q", ",".join(self.queues)]
        return command + self.extra_args

    def start(self) -> CeleryWorker:
        """Start the worker process (without waiting for it to be ready)."""
        if self._process is not None:
            raise WorkerError(f"worker {self.name} was started already")
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(python_path)}
        with self.logfile.open("ab") as output:  # early errors (import, usage) land here too
            self._process = subprocess.Popen(
                self.command,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, control_app: Celery | None = None, *, timeout: float = 45.0) -> None:
        """Wait (bounded) until the node answers ``control.ping``.

        ``control_app`` is any app on the same broker; without one, an app is made from the
        worker's ``RESILIENCE_TEST_BROKER``. Raises :class:`WorkerError` with the log tail.
        """
        with self._control_app(control_app) as app, app.connection_for_write() as connection:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process is None or has_exited(self._process.pid):
                    raise self._error("exited before it was ready")
                replies = app.control.ping(
                    destination=[self.nodename], timeout=0.5, connection=connection
                )
                if any(self.nodename in reply for reply in replies or []):
                    return
        raise self._error(f"did not answer ping within {timeout:g} s")

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting; :meth:`stop` completes it."""
        if self._process is not None and self._process.returncode is None:
            # os.kill, not Popen.send_signal: that would reap an exited worker, and its pid
            # must stay held until stop() has signalled the process group
            os.kill(self._process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown by SIGTERM; after ``timeout``, SIGKILL to the whole group. Reaps."""
        process = self._process
        if process is None:
            return
        pool = self.child_pids() if process.returncode is None else []
        if process.returncode is None:
            self.terminate()
            wait_exited(process.pid, timeout)
            # the leader is exited but not reaped, so its pid names our group still:
            # kill it (if it hangs) and any pool child it left behind
            kill_group(process.pid)
        process.wait(10.0)
        # a SIGKILLed pool process dies a moment after the signal, not with it
        wait_until(
            lambda: not [pid for pid in pool if pid_alive(pid)], timeout=10, what="the pool's exit"
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once (fault injection: a machine lost)."""
        process = self._process
        if process is None:
            return
        kill_group(process.pid)
        process.wait(10.0)

    def child_pids(self) -> list[int]:
        """Return the worker's child processes (the prefork pool)."""
        return child_pids(self.pid)

    def kill_child(self) -> int:
        """SIGKILL one pool process (fault injection) and return its PID."""
        children = self.child_pids()
        if not children:
            raise WorkerError(f"worker {self.name} has no child process")
        victim = random.choice(children)
        os.kill(victim, signal.SIGKILL)
        return victim

    @contextlib.contextmanager
    def _control_app(self, given: Celery | None) -> Iterator[Celery]:
        if given is not None:
            yield given
            return
        broker = self.env.get(ENV_BROKER)
        if not broker:
            raise WorkerError(f"pass a control app, or set {ENV_BROKER} in the worker's env")
        app = Celery(f"control-{self.name}", broker=broker, set_as_current=False)
        try:
            yield app
        finally:
            app.close()

    def _error(self, what: str) -> WorkerError:
        return WorkerError(
            f"worker {self.nodename} {what}; log {self.logfile}:\n{tail(self.logfile)}"
        )


def stop_workers(workers: Sequence[CeleryWorker], timeout: float = 15.0) -> None:
    """Stop several workers at once (a warm shutdown takes about 2 s each); stop them all
    even if one fails, then raise the first error."""
    for worker in workers:
        worker.terminate()
    errors = []
    for worker in workers:
        try:
            worker.stop(timeout)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def deliveries(nodes: list[CeleryWorker], task: str, ids: set[str]) -> dict[str, int]:
    """How many times each of ``ids`` (tasks named ``task``) was handed to one of
    ``nodes``: its worker's "received" log lines, one per delivery."""
    seen = dict.fromkeys(ids, 0)
    pattern = re.compile(rf"Task {re.escape(task)}\[([^\]]+)\] received")
    for node in nodes:
        for found in pattern.finditer(node.log_text()):
            if found[1] in seen:
                seen[found[1]] += 1
    return seen
