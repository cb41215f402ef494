"""The commands ``demo --hold`` prints: quoted for a shell, celery from the venv."""

from __future__ import annotations

import shlex
from pathlib import Path

from example_project.howto import APP, celery_program, copy_commands


def test_commands_export_the_run_and_name_the_app(tmp_path: Path):
    """cd to the root, export every variable (quoted), then ``celery -A example_project.app``."""
    root = tmp_path / "my project"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "celery").touch()
    python = str(root / ".venv" / "bin" / "python")
    urls = {"EXAMPLE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//", "EXAMPLE_NAMESPACE": "d"}
    lines = copy_commands(urls, root=root, python=python)
    assert lines[0] == f"cd {shlex.quote(str(root))}"
    assert shlex.split(lines[1]) == [
        "export",
        "EXAMPLE_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//",
        "EXAMPLE_NAMESPACE=d",
    ]
    assert all(line.startswith(f".venv/bin/celery -A {APP} ") for line in lines[2:])
    assert any(line.endswith(" resilience status") for line in lines)
    assert any(" resilience policy set billing " in line for line in lines)


def test_without_a_celery_script_python_m_celery_is_printed(tmp_path: Path):
    """A Python with no ``celery`` beside it runs ``python -m celery``."""
    python = str(tmp_path / "python3")
    assert celery_program(python, tmp_path) == f"{python} -m celery"
    elsewhere = tmp_path / "venv" / "bin"
    elsewhere.mkdir(parents=True)
    (elsewhere / "celery").touch()
    assert celery_program(str(elsewhere / "python"), tmp_path / "other") == str(
        elsewhere / "celery"
    )
