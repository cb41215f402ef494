"""The command line: run the scenarios, print the table, write ``RESULTS.md``.

::

    python -m benchmarks                      # every scenario, full size -> RESULTS.md
    python -m benchmarks --quick              # every scenario, small (printed only)
    python -m benchmarks --only outage,rate   # some scenarios (printed only)
    python -m benchmarks --only reliability   # the faults -> its section of RESULTS.md
    python -m benchmarks profile              # py-spy over the overhead scenario
    python -m benchmarks compare A B          # the overhead scenario at two revisions
    python -m benchmarks case overload        # one degraded case, resilient side, N runs
    python -m benchmarks instructions         # instructions per task, under valgrind
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from benchmarks import case, compare, instructions, profiling
from benchmarks.degraded import run_degraded
from benchmarks.errors import run_permanent, run_retry_after
from benchmarks.outage import run_outage, run_sweep
from benchmarks.overhead import run_overhead
from benchmarks.params import FULL, QUICK, Params
from benchmarks.rate import run_rate
from benchmarks.reliability import run_reliability
from benchmarks.report import Outcome, load_average, machine, render, revision, splice, versions
from benchmarks.rig import Rig
from benchmarks.waiting import run_waiting

__all__ = ["SCENARIOS", "main"]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"

SCENARIOS: dict[str, Callable[[Rig, Params], Outcome]] = {
    "outage": run_outage,
    "rate": run_rate,
    "permanent": run_permanent,
    "retry_after": run_retry_after,
    "overhead": run_overhead,
    "sweep": run_sweep,
    "waiting": run_waiting,
    "reliability": run_reliability,
    "degraded": run_degraded,
}
#: Scenarios that, run alone at full size, replace their own section of RESULTS.md.
SPLICED = frozenset({"reliability"})

INTRO = (
    "celery-resilience beside plain Celery, scenario by scenario, in one run: real "
    "`celery worker` processes (prefork), private `redis-server` processes (broker and "
    "result backend in one, the library's shared state in another) and the scriptable "
    "upstream of `example_project/upstream.py`, all on 127.0.0.1. The tasks are in "
    "`benchmarks/apps/`; what each figure means is in `benchmarks/README.md`. "
    'Targets are the goals stated in benchmarks/README.md; "met" is judged on the '
    "celery-resilience figure."
)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the report here (default: RESULTS.md for a full run of "
                             "every scenario or of one of "
                             f"{', '.join(sorted(SPLICED))}, else nowhere)")  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.chosen = chosen
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; 0 when every chosen scenario ran (whatever its figures)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # a stopped run leaves the way every run does: its workers and servers stopped
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if argv[:1] == ["profile"]:
        return profiling.main(argv[1:])
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    if argv[:1] == ["case"]:
        return case.main(argv[1:])
    if argv[:1] == ["instructions"]:
        return instructions.main(argv[1:])
    args = _parse(argv)
    params = QUICK if args.quick else FULL
    out = args.out
    if out is None and not args.quick and args.chosen == list(SCENARIOS):
        out = RESULTS
    spliced = (
        out is None and not args.quick and len(args.chosen) == 1 and (args.chosen[0] in SPLICED)
    )
    stamp = dt.datetime.now(dt.timezone.utc)
    workdir = HERE / "runs" / stamp.strftime("%Y%m%dT%H%M%SZ")
    load_before = load_average()
    began = time.monotonic()
    outcomes: list[Outcome] = []
    with Rig(workdir) as rig:
        server = rig.broker.executable
        for name in args.chosen:
            print(f"{name} ...", flush=True)
            outcomes.append(SCENARIOS[name](rig, params))
    minutes = (time.monotonic() - began) / 60
    command = " ".join(["python3 dev.py bench", *argv])
    facts = [
        ("date", stamp.strftime("%Y-%m-%d %H:%M UTC")),
        ("command", f"`{command}` (the same as `python -m benchmarks{' ' if argv else ''}"
                    f"{' '.join(argv)}` in `.venv`)"),
        ("machine", machine()),
        ("versions", versions(server)),
        ("library", revision(HERE.parent)),
        ("load average (1, 5, 15 min)", f"before {load_before}; after {load_average()}"),
        ("duration", f"{minutes:.1f} min"),
    ]  # fmt: skip
    text = render(outcomes=outcomes, facts=facts, intro=INTRO)
    print(text)
    (workdir / "data.json").write_text(
        json.dumps({o.name: o.data for o in outcomes}, indent=1, default=str)
    )
    if out is not None:
        out.write_text(text)
        print(f"written to {out}")
    elif spliced and outcomes[0].section:
        RESULTS.write_text(splice(RESULTS.read_text(), outcomes[0].section))
        print(f"its section written to {RESULTS}")
    print(f"logs and raw data in {workdir}")
    return 0
