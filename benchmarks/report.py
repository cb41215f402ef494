"""Result rows, the machine's description, and ``RESULTS.md``."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Outcome",
    "Row",
    "fmt",
    "load_average",
    "machine",
    "ratio",
    "render",
    "revision",
    "section_facts",
    "splice",
    "versions",
]


@dataclass(frozen=True)
class Row:
    """One measure of one scenario: both sides, their ratio, the target and the verdict."""

    scenario: str
    measure: str
    plain: str
    resilient: str
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None


@dataclass
class Outcome:
    """What a scenario found: table rows, notes, raw data and an optional extra section."""

    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    section: str = ""


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for a table: ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.{digits}f}{unit}"


def ratio(resilient: float, plain: float, digits: int = 2) -> str:
    """``resilient / plain`` (as a share when ``digits`` is ``%``)."""
    if not plain or math.isnan(plain) or math.isnan(resilient):
        return "n/a"
    return f"{resilient / plain:.{digits}f}"


def load_average() -> str:
    """The load average now (1, 5, 15 minutes), as ``uptime`` prints it."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> str:
    """CPU model, cores and memory, from /proc."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kib = 0
    return (
        f"{model}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}"
    )


def versions(redis_server: str) -> str:
    """Python, Celery, kombu, redis-py and redis-server versions."""
    try:
        server = subprocess.run(
            [redis_server, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        server_version = next((w.split("=", 1)[1] for w in server if w.startswith("v=")), "?")
    except OSError:
        server_version = "?"
    packages = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("celery", "kombu", "redis", "requests")
    )
    return f"Python {platform.python_version()}, {packages}, redis-server {server_version}"


def revision(root: Path) -> str:
    """The commit the library was measured at, and whether its files had changes."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=False)  # fmt: skip
        except OSError:
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "celery_resilience").splitlines()
    if not changed:
        return f"`{commit}`, `celery_resilience/` as committed"
    files = ", ".join(sorted(line[3:].removeprefix("celery_resilience/") for line in changed))
    return f"`{commit}`, with uncommitted changes in `celery_resilience/`: {files}"


def _table(rows: list[Row]) -> list[str]:
    lines = [
        "| scenario | measure | plain Celery | celery-resilience | ratio | target | met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.scenario} | {row.measure} | {row.plain} | {row.resilient} | {row.ratio} "
            f"| {row.target} | {met} |"
        )
    return lines


def render(*, outcomes: list[Outcome], facts: list[tuple[str, str]], intro: str) -> str:
    """The whole report as Markdown."""
    lines = ["# Benchmark results", "", intro, "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in facts]
    lines += ["", "## Results", ""]
    lines += _table([row for outcome in outcomes for row in outcome.rows])
    notes = [note for outcome in outcomes for note in outcome.notes]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in notes]
    for outcome in outcomes:
        if outcome.section:
            lines += ["", outcome.section.rstrip()]
    return "\n".join(lines) + "\n"


def splice(text: str, section: str) -> str:
    """``text`` with the ``## `` section that ``section`` starts with replaced by it (or
    ``section`` appended, if ``text`` has none of that title)."""
    title = section.split("\n", 1)[0]
    lines = text.rstrip("\n").split("\n")
    if title not in lines:
        return "\n".join([*lines, "", section.rstrip("\n")]) + "\n"
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    kept = [*lines[:start], *section.rstrip("\n").split("\n")]
    if end < len(lines):
        kept += ["", *lines[end:]]
    return "\n".join(kept) + "\n"


def section_facts(
    *, args: str, started: float, began: float, load_before: str, redis_server: str
) -> list[tuple[str, str]]:
    """The facts heading a scenario's own section: when (``started``, a ``time.time()``),
    the command (``args`` after ``python3 dev.py bench``), the machine, the versions, the
    library's commit, the load average and how long since ``began`` (``time.monotonic()``)."""
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))),
        ("command", f"`python3 dev.py bench {args}` (`python -m benchmarks {args}` in `.venv`)"),
        ("machine", f"{machine()}; `nproc` {os.cpu_count()}"),
        ("versions", versions(redis_server)),
        ("library", revision(Path(__file__).resolve().parent.parent)),
        ("load average (1, 5, 15 min)", f"before {load_before}; after {load_average()}"),
        ("duration", f"{(time.monotonic() - began) / 60:.1f} min"),
    ]
