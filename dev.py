#!/usr/bin/env python3
"""One entry point for people working on celery-resilience; needs only Python 3.10+.

    python3 dev.py demo [--quick] ...   run the demo (creates .venv on first use)
    python3 dev.py test [pytest args]   run the whole test suite
    python3 dev.py test --fast          the unit and property tests only (no network, seconds)
    python3 dev.py lint                 ruff, mypy (strict) and the import-linter layer contract
    python3 dev.py bench [args]         run the benchmarks (benchmarks/README.md)
    python3 dev.py docs [--serve]       build the documentation site into site/, or serve it

Each command creates ``.venv`` beside this file when it is missing and installs the
project into it (again whenever pyproject.toml changes). ``DEV_VENV=.venv-3.10 python3.10
dev.py test`` uses another directory, so that several Pythons can live side by side; a venv
made by another Python version than the one running dev.py is made anew.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / os.environ.get("DEV_VENV", ".venv")
EXTRAS = "test,example,dev,docs"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> Path:
    """Create .venv and install the project with its extras, when needed."""
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may run on an older python3
        sys.exit(f"celery-resilience needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    python = _python()
    if not python.exists() or _venv_version() != _running_version():
        print(f"creating {VENV.name} with Python {_running_version()} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    if not stamp.exists():
        print(f"installing celery-resilience and its extras {EXTRAS} ...", flush=True)
        run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        run([python, "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]"])
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return python


def _running_version() -> str:
    return "{}.{}".format(*sys.version_info[:2])


def _venv_version() -> str | None:
    """The Python major.minor that made the venv, from its pyvenv.cfg."""
    try:
        lines = (VENV / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() in {"version", "version_info"}:
            return ".".join(value.strip().split(".")[:2])
    return None


def run(cmd: list[object]) -> None:
    """Run a command in the project root; exit with its code if it fails.

    Ctrl-C reaches the command itself (it is in the same process group); this process
    waits for the command to stop what it started rather than killing it. SIGTERM and
    SIGHUP are passed on to it.
    """
    process = subprocess.Popen([str(c) for c in cmd], cwd=ROOT)

    def forward(signum: int, frame: object) -> None:
        process.send_signal(signum)

    passed_on = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    previous.update({s: signal.signal(s, forward) for s in passed_on})
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        sys.exit(128 - code if code < 0 else code)


def docs(python: Path, rest: list[str]) -> None:
    """Build the site with mkdocs, warnings as errors (``--serve``: serve it while editing)."""
    os.environ["NO_MKDOCS_2_WARNING"] = "1"  # Material's notice about MkDocs 2 on each run
    if "--serve" in rest:
        run([python, "-m", "mkdocs", "serve", *(arg for arg in rest if arg != "--serve")])
    else:
        run([python, "-m", "mkdocs", "build", "--strict", *rest])


def main(argv: list[str]) -> None:
    """Dispatch one command."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command not in {"demo", "test", "lint", "bench", "docs"}:
        sys.exit(f"unknown command {command!r}; try: python3 dev.py --help")
    python = ensure_venv()
    if command == "demo":
        run([python, "-m", "example_project", "demo", *rest])
    elif command == "test":
        if "--fast" in rest:
            rest = [arg for arg in rest if arg != "--fast"]
            rest = ["tests/unit", "example_project/tests", "-m", "not integration", *rest]
        run([python, "-m", "pytest", *rest])
    elif command == "lint":
        run([python, "-m", "ruff", "check", "."])
        run([python, "-m", "mypy"])
        run([python.parent / "lint-imports"])
    elif command == "docs":
        docs(python, rest)
    else:
        run([python, "-m", "benchmarks", *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
