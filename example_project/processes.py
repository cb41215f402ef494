"""The demo's child processes: started in their own process group, stopped by PID.

Each :class:`Child` runs in a new session (so a Ctrl-C in the terminal reaches only the
demo, which then stops its children in order) and logs to a file. :meth:`Child.stop` sends
SIGTERM, waits (bounded), then SIGKILLs the whole group, so that no pool process is left::

    with Children() as children:
        children.start("worker-1", [sys.executable, "-m", "celery", ...], env=env)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["Child", "Children", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (its pid stays ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class Child:
    """One child process in its own session, logging to ``logfile``."""

    def __init__(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str], logfile: Path
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.logfile = logfile
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process ID, once started."""
        return None if self.process is None else self.process.pid

    def start(self, cwd: Path | None = None) -> Child:
        """Start the process (without waiting for it to be ready)."""
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as output:
            self.process = subprocess.Popen(  # noqa: S603 - commands the demo builds
                self.command,
                env={**os.environ, **self.env},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and not _exited(self.process.pid)

    def terminate(self) -> None:
        """Send SIGTERM (a warm shutdown, for a Celery worker) without waiting."""
        if self.process is not None and not _exited(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the group; reap."""
        process = self.process
        if process is None:
            return
        self.terminate()
        deadline = time.monotonic() + timeout
        while not _exited(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the leader is not reaped yet, so its pid still names our group: kill what is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log."""
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """The demo's children; :meth:`stop_all` stops them all (in parallel, bounded)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[Child] = []

    def start(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> Child:
        """Start a child named ``name``, logging to ``<logdir>/<name>.log``."""
        child = Child(name, command, env=env, logfile=self.logdir / f"{name}.log")
        self.children.append(child)
        return child.start(cwd)

    def pids(self) -> list[int]:
        """The PIDs of every child started (running or not)."""
        return [c.pid for c in self.children if c.pid is not None]

    def stop_all(self, timeout: float = 10.0) -> None:
        """Warm-stop every child at once, then kill whatever is left of each group."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            child.stop(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> Children:
        """Return ``self``."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every child."""
        self.stop_all()
