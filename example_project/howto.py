"""What to type while the demo holds: the exact commands, with this run's URLs.

``python3 dev.py demo --hold`` keeps the workers, the upstream and Redis up after the
report and prints these lines, ready to copy into another terminal (bash or zsh).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["APP", "celery_program", "copy_commands"]

APP = "example_project.app"
"""The example project's Celery app, as ``celery -A`` names it."""

#: What to try, with the demo's names (the policy and breakers of example_project).
TRIES = (
    "resilience status",
    "resilience breaker open billing",
    "resilience breaker reset billing",
    "resilience policy show billing",
    "resilience policy set billing breaker.open_for=30 max_retries=3",
    "resilience dead-letters list",
    "inspect stats",
)


def celery_program(python: str, root: Path) -> str:
    """The ``celery`` beside ``python`` (relative to ``root`` when inside it, as
    ``.venv/bin/celery``), else ``python -m celery``."""
    program = Path(python).with_name("celery")
    if not program.exists():
        return f"{shlex.quote(python)} -m celery"
    try:
        return shlex.quote(program.relative_to(root).as_posix())
    except ValueError:
        return shlex.quote(str(program))


def copy_commands(urls: Mapping[str, str], *, root: Path, python: str) -> list[str]:
    """``cd``, ``export`` of the run's ``EXAMPLE_*`` variables, then the commands to try."""
    celery = celery_program(python, root)
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in urls.items())
    return [
        f"cd {shlex.quote(str(root))}",
        f"export {exports}",
        *(f"{celery} -A {APP} {what}" for what in TRIES),
    ]
