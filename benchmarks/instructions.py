"""``python -m benchmarks instructions``: CPU instructions per task, counted, not timed.

Each variant's no-op (``ignore_result``: no result is written) runs in a process of its
own under valgrind's callgrind, through Celery's own tracer as a prefork pool process
runs it (its signals, request stack and logging), after a warm-up. Two runs per
variant, of ``--base`` and ``--base`` + ``--tasks`` tasks; the difference over
``--tasks`` is the variant's instructions per task, free of start-up and of the
machine's load::

    python3 dev.py bench instructions                    # plain and resilient (no gate)
    python3 dev.py bench instructions --variants plain,resilient+gates

A count moves by about one percent from run to run where wall clock and CPU time move
by tens of percent, so it can tell two revisions apart by a change of a few percent.
It is not a time: a cache miss costs more than an instruction. The gated variant's
count depends on timing (a grant ahead lasts 0.1 s, and under valgrind an attempt is
fifty times slower), so it is printed, but only the ungated figures compare across
machines and revisions. Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.pool_request import pool_request

__all__ = ["LABELS", "main", "per_task"]

HERE = Path(__file__).resolve().parent
_SUMMARY = re.compile(r"^summary:\s+(\d+)\s*$", re.MULTILINE)
#: Tasks run before the counted ones: connections made, scripts loaded, caches filled.
WARM_UP = 200
#: The variants, as the overhead scenario names them.
LABELS = ("plain", "resilient", "resilient+gates")


def per_task(small: int, large: int, tasks: int) -> float:
    """Instructions per task from the totals of a run of ``tasks`` more tasks than another.

    >>> per_task(2_000_000, 2_450_000, 1000)
    450.0
    """
    if tasks <= 0:
        raise ValueError("tasks must be > 0")
    return (large - small) / tasks


def _tracer(task: Any) -> Any:
    from celery.app.trace import build_tracer  # noqa: PLC0415 - in the child only

    return build_tracer(task.name, task, eager=False, propagate=False, app=task.app)


def _run(task: Any, tasks: int) -> None:
    """Run the warm-up, then ``tasks`` tasks of ``task``, through Celery's tracer."""
    trace = _tracer(task)
    for _ in range(WARM_UP + tasks):
        _one(trace)


def _one(trace: Any) -> None:
    task_id = uuid.uuid4()
    trace(str(task_id), (), {}, pool_request(task_id))


def _child(variant: str, tasks: int, workdir: Path) -> int:
    """Run ``tasks`` tasks of ``variant`` through Celery's tracer (under valgrind).

    Plain Celery's no-op runs in a process that imports nothing of the library's, as in
    a worker of its own: a process that declares resilient tasks is wired for them.
    """
    # imported here, not at the top: the plain child must not declare resilient tasks
    if variant == "plain":
        from benchmarks.apps.plain import noop  # noqa: PLC0415

        _run(noop, tasks)
        return 0
    from benchmarks.attempts import as_in_a_worker  # noqa: PLC0415
    from benchmarks.overhead import VARIANTS  # noqa: PLC0415
    from benchmarks.rig import Rig  # noqa: PLC0415

    task = next(t for label, _, t in VARIANTS if label == variant)
    with Rig(workdir) as rig, rig.upstream_paused():
        as_in_a_worker()
        _run(task, tasks)
    return 0


def _count(variant: str, tasks: int, workdir: Path, valgrind: str) -> int:
    """Total instructions of a child running ``tasks`` tasks of ``variant``."""
    out = workdir / f"{variant}-{tasks}.callgrind"
    command = [
        valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "benchmarks.instructions", "--child", variant, str(tasks),
        "--workdir", str(workdir / f"{variant}-{tasks}"),
    ]  # fmt: skip
    log = workdir / f"{variant}-{tasks}.log"
    with log.open("w") as sink:
        subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=1800)
    match = _SUMMARY.search(out.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no instruction count in {out}")
    return int(match.group(1))


def main(argv: Sequence[str]) -> int:
    """Count each variant's instructions per task; print them beside plain Celery's."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks instructions")
    labels = list(LABELS)
    parser.add_argument("--variants", default="plain,resilient",
                        help=f"comma-separated, of: {', '.join(labels)}")  # fmt: skip
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "TASKS"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child(args.child[0], int(args.child[1]), args.workdir)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(labels))
    if unknown or not chosen:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(labels)}")
    if args.tasks <= 0 or args.base < 0:
        parser.error("--tasks must be > 0 and --base >= 0")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "runs" / f"instructions-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, float] = {}
    for variant in chosen:
        small = _count(variant, args.base, workdir, valgrind)
        large = _count(variant, args.base + args.tasks, workdir, valgrind)
        counts[variant] = per_task(small, large, args.tasks)
    plain = counts.get("plain")
    for variant, count in counts.items():
        beyond = f", {count - plain:,.0f} beyond plain" if plain and variant != "plain" else ""
        caveat = " (timing-dependent: grants ahead)" if variant == "resilient+gates" else ""
        print(f"{variant}: {count:,.0f} instructions per task{beyond}{caveat}")
    print(f"(callgrind output in {workdir})")
    return 0


if __name__ == "__main__":  # the child under valgrind: ``python -m benchmarks.instructions``
    sys.exit(main(sys.argv[1:]))
