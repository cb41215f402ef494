"""A private ``redis-server`` on a free 127.0.0.1 port, for tests and benchmarks.

Never the shared Redis on 6379: each :class:`RedisServer` starts its own process, which
saves nothing to disk, and stops it by PID::

    with RedisServer() as server:
        server.client().set("k", "v")
        server.kill()      # fault injection: the server vanishes
        server.restart()   # back on the same port, empty
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from example_project.embedded_redis import RedisNotFoundError, find_redis_server
from tests.helpers.processes import LoggedProcess, free_port, tail

__all__ = ["HOST", "RedisNotFoundError", "RedisServer", "RedisStartError", "find_redis_server"]

HOST = "127.0.0.1"


class RedisStartError(RuntimeError):
    """The ``redis-server`` process did not come up."""


class RedisServer(LoggedProcess):
    """A ``redis-server`` process of our own; ``extra_args`` are appended to its command."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        highest_port: int | None = None,
    ) -> None:
        self.executable = find_redis_server()
        self.highest_port = highest_port
        self.port = port or 0
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._directory = directory
        self._owned_directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        """The server's working directory (created on first start if none was given)."""
        if self._directory is None:
            self._owned_directory = Path(tempfile.mkdtemp(prefix="redis-server-"))
            self._directory = self._owned_directory
        return self._directory

    @property
    def logfile(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return None if self._process is None else self._process.pid

    def url(self, db: int = 0) -> str:
        """Return ``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        """Return a new client (close it when done); ``options`` go to ``redis.Redis``."""
        return redis.Redis(host=HOST, port=self.port, db=db, **options)

    def start(self) -> RedisServer:
        """Start the server (on a free port unless one was given) and wait for PING."""
        if self._process is not None:
            return self
        if self.port:
            self._launch()
            return self
        for attempt in range(3):  # a free port can be taken between our check and its bind
            self.port = free_port(self.highest_port)
            try:
                self._launch()
            except RedisStartError:
                if attempt == 2:
                    raise
            else:
                return self
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL after ``timeout``)."""
        self._terminate(signal.SIGTERM, timeout)
        if self._owned_directory is not None:
            shutil.rmtree(self._owned_directory, ignore_errors=True)
            self._owned_directory = self._directory = None

    def kill(self) -> None:
        """SIGKILL the server (fault injection); :meth:`restart` brings it back."""
        self._terminate(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server if it runs, then start it again on the same port (empty)."""
        self._terminate(signal.SIGTERM, timeout)
        self._launch()

    def _launch(self) -> None:
        command = [
            self.executable,
            "--save", "",
            "--appendonly", "no",
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.logfile),
            *self.extra_args,
        ]  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as output:  # errors before it opens its log land here
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_for_ping()
        except RedisStartError:
            self._terminate(signal.SIGKILL, 5.0)
            raise

    def _wait_for_ping(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        problem = f"did not answer PING within {self.startup_timeout:g} s"
        with self.client(socket_connect_timeout=0.5, socket_timeout=0.5) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    problem = f"exited with status {self._process.returncode}"
                    break
                try:
                    if client.ping():
                        return
                except (redis.RedisError, OSError):
                    pass  # not listening (or still loading) yet
                time.sleep(0.02)
        raise RedisStartError(
            f"redis-server on port {self.port} {problem}; log {self.logfile}:\n{tail(self.logfile)}"
        )

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(5.0)
