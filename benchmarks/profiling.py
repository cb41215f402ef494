"""``python -m benchmarks profile``: py-spy over a worker draining no-op tasks.

The overhead scenario's set-up (tasks queued, then one node of 2 prefork processes drains
them) with ``py-spy record --subprocesses`` attached to the node. ``--in-process`` instead
runs attempts in this process (see :mod:`benchmarks.attempts`) under cProfile. The folded stacks are
kept under ``benchmarks/runs/``; the summary shows, for the pool processes, the functions
with the most samples on the stack (inclusive) and at the top (self). Needs ``py-spy``
(``pip install py-spy``) and the right to ptrace the worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchmarks.attempts import cpu_per_attempt, profile_attempts
from benchmarks.overhead import VARIANTS, drain
from benchmarks.rig import SIDES, Rig
from example_project.processes import Child

__all__ = ["Folded", "main", "summarise"]

HERE = Path(__file__).resolve().parent
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")
#: A stack that passes through this frame ran in a pool process (billiard's work loop).
_POOL = "workloop"


class Folded:
    """Folded stacks (``frame;frame;... count``) as py-spy's raw format writes them."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.stacks: list[tuple[list[str], int]] = []
        for raw in lines:
            stack, _, count = raw.rstrip().rpartition(" ")
            if count.isdigit():
                self.stacks.append(([_short(f) for f in stack.split(";")], int(count)))

    def pool(self) -> Folded:
        """Only the stacks of pool processes."""
        kept = Folded(())
        kept.stacks = [(s, n) for s, n in self.stacks if any(_POOL in f for f in s)]
        return kept

    def total(self) -> int:
        """Samples in all."""
        return sum(n for _, n in self.stacks)

    def inclusive(self) -> Counter[str]:
        """Samples with each function anywhere on the stack (once per stack)."""
        counts: Counter[str] = Counter()
        for stack, n in self.stacks:
            for frame in set(stack):
                counts[frame] += n
        return counts

    def self_time(self) -> Counter[str]:
        """Samples with each function at the top of the stack."""
        counts: Counter[str] = Counter()
        for stack, n in self.stacks:
            counts[stack[-1]] += n
        return counts


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarise(folded: Folded, *, top: int = 30) -> str:
    """The pool processes' top functions, inclusive and self, as text."""
    pool = folded.pool()
    total = pool.total() or 1
    lines = [f"pool-process samples: {pool.total()} (of {folded.total()} in all)", ""]
    lines.append("inclusive (on the stack), celery_resilience and the task machinery:")
    for frame, n in pool.inclusive().most_common():
        if "celery_resilience/" in frame or frame.startswith(("trace_task", "__call__")):
            lines.append(f"  {n / total:6.1%}  {frame}")
    lines += ["", f"self (top of the stack), top {top}:"]
    for frame, n in pool.self_time().most_common(top):
        lines.append(f"  {n / total:6.1%}  {frame}")
    lines += ["", f"inclusive, top {top}:"]
    for frame, n in pool.inclusive().most_common(top):
        lines.append(f"  {n / total:6.1%}  {frame}")
    return "\n".join(lines)


def _in_process(variant: str, attempts: int, top: int) -> int:
    """CPU per attempt of each no-op (plain Celery's through the same loop, then what
    each resilient one costs beyond it), and a cProfile of ``variant``'s."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "runs" / f"profile-{stamp}"
    with Rig(workdir) as rig, rig.upstream_paused():  # nothing here calls it
        plain_cost = 0.0
        for label, side, task in VARIANTS:
            cost = cpu_per_attempt(task, attempts=attempts, reps=5)
            beyond = f", {cost - plain_cost:.0f} beyond plain" if side == "resilient" else ""
            print(f"{label}: {cost:.0f} CPU us per attempt (in-process, best of 5{beyond})")
            if side == "plain":
                plain_cost = cost
        task = next(t for label, _, t in VARIANTS if label == variant)
        text = profile_attempts(task, attempts=attempts, top=top)
    (workdir / f"{variant}.cprofile.txt").write_text(text)
    print(text)
    return 0


def main(argv: Sequence[str]) -> int:
    """Profile one variant of the overhead scenario; print the summary."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile")
    labels = [label for label, _, _ in VARIANTS]
    parser.add_argument("--variant", choices=labels, default="resilient+gates")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=200, help="samples a second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--in-process", action="store_true",
                        help="no worker: time and cProfile attempts in this process")  # fmt: skip
    args = parser.parse_args(argv)
    if args.in_process:
        if args.variant == "plain":
            parser.error("--in-process measures the resilient variants")
        return _in_process(args.variant, min(args.tasks, 3_000), args.top)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    label, side, task = next(v for v in VARIANTS if v[0] == args.variant)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "runs" / f"profile-{stamp}"
    output = workdir / f"{label}.folded"
    with Rig(workdir) as rig:
        queue = f"profile.{label}"
        rig.publish(task, [()] * args.tasks, queue=queue)
        with rig.nodes(SIDES[side], queue, count=1, concurrency=2) as nodes:
            command = [spy, "record", "--pid", str(nodes[0].pid), "--subprocesses",
                       "--format", "raw", "--nolineno", "--rate", str(args.rate),
                       "--output", str(output)]  # fmt: skip
            profiler = Child("py-spy", command, env={}, logfile=workdir / "py-spy.log").start()
            result = drain(rig, nodes[0], queue, args.tasks)
            if profiler.process is not None:
                profiler.process.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 20
                while profiler.running() and time.monotonic() < deadline:
                    time.sleep(0.1)
            profiler.stop(timeout=5)
    print(f"{label}: {result.rate:.0f} tasks/s while sampled at {args.rate}/s")
    if not output.exists():
        print(f"py-spy wrote nothing; see {workdir / 'py-spy.log'}", file=sys.stderr)
        return 1
    text = summarise(Folded(output.read_text().splitlines()), top=args.top)
    (workdir / f"{label}.summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nfolded stacks: {output}")
    return 0
