"""Process and port facts read from /proc and the socket layer (Linux)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import TypeVar

S = TypeVar("S", bound="LoggedProcess")


def free_port(highest: int | None = None) -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, at most ``highest`` when
    given (a Redis Cluster node also listens on its port + 10000)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if highest is None or port <= highest:
            return port
    raise OSError(f"no free port at or below {highest}")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and ")"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """Return the living children of ``pid``, found by scanning /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return sorted(children)


def has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited; it is not reaped (a zombie holds its pid)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait (bounded) until our child ``pid`` exits, without reaping it; return whether it did.

    Not reaping keeps the pid (and so its process group id) from being reused while the
    caller still signals the group.
    """
    deadline = time.monotonic() + timeout
    while True:
        if has_exited(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to process group ``pgid``, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LoggedProcess(ABC):
    """A process we start, stop by PID and whose log we read; a context manager."""

    @property
    @abstractmethod
    def logfile(self) -> Path:
        """Where the process logs (its stdout and stderr included)."""

    @abstractmethod
    def start(self: S) -> S:
        """Start the process; return ``self``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the process (bounded), and reap it."""

    def log_text(self) -> str:
        """Return the log ('' before there is one)."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def __enter__(self: S) -> S:
        """Start the process."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the process."""
        self.stop()
