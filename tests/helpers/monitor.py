"""Every command a Redis server receives, read through ``MONITOR`` in a background thread.

``MONITOR`` is read from a plain socket (redis-py drops a connection whose read times
out, and a monitor must wait without end). Lines look like::

    1700000000.123456 [2 127.0.0.1:53210] "EVALSHA" "6b1e..." "5" "t-x:breaker:{a}:state" ...

where ``2`` is the database and ``lua`` stands for the client of a command a script ran::

    with CommandLog("127.0.0.1", port) as log:
        ...
        log.commands(db=2, containing="task-id")
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass
from types import TracebackType

from celery_resilience.state.scripts import script_source

_LINE = re.compile(r"^\+(?P<time>\d+\.\d+) \[(?P<db>\d+) (?P<client>[^\]]+)\] (?P<args>.*)$")
_SHA = re.compile(r'^"EVALSHA" "(?P<sha>[0-9a-f]{40})"', re.IGNORECASE)


def script_sha(name: str) -> str:
    """The SHA1 under which one of the package's Lua scripts runs (``EVALSHA``)."""
    return hashlib.sha1(script_source(name).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Command:
    """One command as MONITOR shows it (``args`` as quoted text)."""

    time: float
    db: int
    client: str
    args: str

    @property
    def name(self) -> str:
        """The command's name, upper case."""
        return self.args.split(" ", 1)[0].strip('"').upper()

    @property
    def sha(self) -> str | None:
        """The script an ``EVALSHA`` runs (see :func:`script_sha`), else None."""
        match = _SHA.match(self.args)
        return match["sha"].lower() if match else None


class CommandLog:
    """Collects MONITOR lines until stopped; a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CommandLog:
        """Connect, send MONITOR, and read in a thread from its ``+OK`` on."""
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(b"MONITOR\r\n")
        buffer = b""
        while b"\r\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("redis closed the MONITOR connection")
            buffer += chunk
        first, rest = buffer.split(b"\r\n", 1)
        if first != b"+OK":
            raise ConnectionError(f"MONITOR answered {first!r}")
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, args=(rest,), daemon=True)
        self._thread.start()
        return self

    def _read(self, buffer: bytes) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            *lines, buffer = buffer.split(b"\r\n")
            if lines:
                with self._lock:
                    self._lines.extend(line.decode("utf-8", "replace") for line in lines)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk

    def commands(self, *, db: int | None = None, containing: str = "") -> list[Command]:
        """Commands sent by clients (not those run by scripts), optionally filtered."""
        with self._lock:
            lines = list(self._lines)
        found = []
        for line in lines:
            match = _LINE.match(line)
            if match is None or match["client"] == "lua" or containing not in line:
                continue
            command = Command(
                float(match["time"]), int(match["db"]), match["client"], match["args"]
            )
            if db is None or command.db == db:
                found.append(command)
        return found

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop reading and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
