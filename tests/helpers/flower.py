"""A real Flower 2.x process for integration tests, queried over its HTTP API.

::

    with FlowerProcess("tests.apps.inspect_app", env=env, logfile=path) as flower:
        flower.get("/api/workers", refresh=1)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from tests.helpers import REPO_ROOT
from tests.helpers.processes import (
    LoggedProcess,
    free_port,
    has_exited,
    kill_group,
    tail,
    wait_exited,
)


class FlowerError(RuntimeError):
    """Flower did not start or did not answer."""


class FlowerProcess(LoggedProcess):
    """``celery -A <app> flower`` on a free 127.0.0.1 port, its API open without auth."""

    def __init__(self, app: str, *, env: Mapping[str, str], logfile: Path) -> None:
        self.app = app
        self.env = dict(env)
        self._logfile = logfile
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def logfile(self) -> Path:
        """Flower's stdout and stderr."""
        return self._logfile

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlowerProcess:
        """Start Flower and wait (bounded) until its API answers."""
        self.port = free_port()
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            **self.env,
            "PYTHONPATH": os.pathsep.join(python_path),
            "FLOWER_UNAUTHENTICATED_API": "true",
        }
        command = [
            sys.executable, "-m", "celery", "-A", self.app, "flower",
            f"--port={self.port}", "--address=127.0.0.1", "--inspect_timeout=1500",
        ]  # fmt: skip
        with self.logfile.open("ab") as output:
            self._process = subprocess.Popen(
                command,
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if has_exited(self._process.pid):
                raise FlowerError(f"flower exited; log {self.logfile}:\n{tail(self.logfile)}")
            try:
                if requests.get(f"{self.url}/healthcheck", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise FlowerError(f"flower did not answer in 30 s; log:\n{tail(self.logfile)}")

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` from the API and return the JSON answer."""
        resp = requests.get(self.url + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL to its group if it lingers; reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            os.kill(process.pid, signal.SIGTERM)
            if not wait_exited(process.pid, 10):
                kill_group(process.pid)
        process.wait(10)
