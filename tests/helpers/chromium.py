"""Headless Chromium (Debian's ``chromium`` package) for pages that tests and docs render.

::

    chromium = find_chromium()          # $CHROMIUM, else chromium / chromium-browser on PATH
    html = dump_dom(chromium, url, profile=tmp_path / "profile")
    screenshot(chromium, url, out=Path("page.png"), size="1280,900", profile=...)

Each call is one browser process in a session of its own with a throwaway profile; on a
timeout its whole process group is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers.processes import kill_group

#: Quiet, reproducible rendering: no network of its own, no animations, no scrollbars.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-prefers-reduced-motion", "--virtual-time-budget=5000",
]  # fmt: skip


def find_chromium() -> str | None:
    """The path of a Chromium: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser``."""
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def _run(chromium: str, args: list[str], profile: Path, timeout: float) -> str:
    process = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited with {process.returncode}: {err[-2000:]}")
    return out


def dump_dom(chromium: str, url: str, *, profile: Path, timeout: float = 60) -> str:
    """The DOM of ``url`` once its scripts ran, as HTML."""
    return _run(chromium, ["--dump-dom", url], profile, timeout)


def screenshot(
    chromium: str, url: str, *, out: Path, size: str, profile: Path, timeout: float = 60
) -> None:
    """Render ``url`` in a window of ``size`` (``"1280,900"``) and save it as a PNG."""
    _run(chromium, [f"--window-size={size}", f"--screenshot={out}", url], profile, timeout)
