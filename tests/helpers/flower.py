"""A real Flower 2.x process for integration tests, queried over its HTTP API.

::

    with FlowerProcess("tests.apps.inspect_app", env=env, logfile=path) as flower:
        flower.get("/api/workers", refresh=1)
        other_rows(flower.page(f"/worker/{nodename}"))   # the worker page's "Other" tab
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from html.parser import HTMLParser
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

    def page(self, path: str) -> str:
        """GET ``path`` (a page, not the API) and return its HTML."""
        resp = requests.get(self.url + path, timeout=10)
        resp.raise_for_status()
        return resp.text

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


class _OtherTab(HTMLParser):
    """Collects the table rows of the worker page's "Other" tab (``#tab-other``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.shown = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id") == "tab-other":
            self.inside = True
            self.shown = "show" in (found.get("class") or "").split()
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_comment(self, data: str) -> None:
        if "end other tab" in data:
            self.inside = False


def other_rows(html: str) -> dict[str, str]:
    """The rows of the worker page's "Other" tab as ``{name: value}``, as text (unescaped)."""
    parser = _OtherTab()
    parser.feed(html)
    return {row[0]: row[1] for row in parser.rows if len(row) == 2}


def other_tab_shown(html: str) -> bool:
    """Whether the "Other" tab is the one shown (a DOM after Flower's scripts ran)."""
    parser = _OtherTab()
    parser.feed(html)
    return parser.shown
