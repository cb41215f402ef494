#!/usr/bin/env python3
"""Print the oldest and the newest CPython 3.10+ on this machine, one path a line.

Looks at ``python3.N`` on PATH and at pyenv's versions (``$PYENV_ROOT`` or ``~/.pyenv``);
an interpreter counts only if it runs and has ``venv``. One line when only one version
exists. CI runs the test suite once with each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROBE = "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"


def candidates() -> list[str]:
    """Interpreter paths worth probing."""
    found = [sys.executable]
    for minor in range(10, 20):
        path = shutil.which(f"python3.{minor}")
        if path:
            found.append(path)
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found += [str(p) for p in sorted(root.glob("versions/3.*/bin/python3"))]
    return found


def version(python: str) -> tuple[int, ...] | None:
    """The interpreter's version, or None if it does not run (e.g. an idle pyenv shim)."""
    try:
        result = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return tuple(int(part) for part in result.stdout.strip().split("."))


def main() -> None:
    """Print the oldest and newest interpreter (3.10 or newer)."""
    versions: dict[tuple[int, ...], str] = {}
    for python in candidates():
        found = version(python)
        if found is not None and found >= (3, 10):
            versions.setdefault(found[:2], python)
    if not versions:
        sys.exit("no Python 3.10 or newer found")
    ordered = sorted(versions)
    for key in dict.fromkeys([ordered[0], ordered[-1]]):
        print(versions[key])


if __name__ == "__main__":
    main()
