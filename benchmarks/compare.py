"""``python -m benchmarks compare A B``: the overhead scenario at two revisions, alternated.

Each revision is exported (``git archive``) to a directory of its own, and its drains run
from there, workers included, so two revisions never share an installed package. The
sessions alternate (A, B, A, B...): whatever else loads the machine falls on both. In a
session every variant of :data:`benchmarks.overhead.VARIANTS` is drained ``--reps`` times,
interleaved, and each resilient run is compared with plain Celery's run of the same
session and repetition: CPU per task (worker, pool, both Redis) and tasks per second.
Prints, per revision, the median and range of those ratios and the CPU milliseconds per
task by process::

    python3 dev.py bench compare 6166cee HEAD --sessions 3 --reps 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

HERE = Path(__file__).resolve().parent

#: Run in a revision's own tree (cwd and PYTHONPATH): its drains, as JSON lines.
_DRAINS = """
import json, sys
from pathlib import Path
from benchmarks.overhead import VARIANTS, _one
from benchmarks.rig import Rig

reps, total, workdir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
with Rig(workdir) as rig:
    for rep in range(reps):
        for label, side, task in VARIANTS:
            run = _one(rig, label, side, task, rep, total)
            print(json.dumps({"variant": label, "rep": rep, "rate": run.rate,
                              "cpu_ms": run.cpu_ms, "split": run.cpu_split}), flush=True)
"""


def _export(revision: str, into: Path) -> str:
    """Write ``revision``'s tree into ``into``; its full commit ID."""
    into.mkdir(parents=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=HERE.parent, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", commit], cwd=HERE.parent, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _session(tree: Path, reps: int, tasks: int, workdir: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _DRAINS, str(reps), str(tasks), str(workdir)],
        cwd=tree, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _measured(run: dict[str, Any]) -> bool:
    """Whether a drain was measured (a queue that never passed both marks gives NaN)."""
    return all(math.isfinite(run[key]) and run[key] > 0 for key in ("rate", "cpu_ms"))


def _summary(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-run ratios to the same session's and repetition's plain run, and ms by process;
    a run not measured, or whose plain run was not, is left out (and counted)."""
    plain = {(r["session"], r["rep"]): r for r in runs if r["variant"] == "plain"}
    rows: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        base = plain.get((r["session"], r["rep"]))
        if base is None or not _measured(base) or not _measured(r):
            rows[f"{r['variant']}: runs left out"].append(1.0)
            continue
        name = str(r["variant"])
        if name != "plain":
            rows[f"{name}: CPU ratio"].append(r["cpu_ms"] / base["cpu_ms"])
            rows[f"{name}: tasks/s ratio"].append(r["rate"] / base["rate"])
        rows[f"{name}: CPU ms per task"].append(r["cpu_ms"])
        for role, ms in r["split"].items():
            rows[f"{name}: {role} ms"].append(ms)
    return rows


def main(argv: Sequence[str]) -> int:
    """Compare two revisions; print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks compare")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--sessions", type=int, default=3, help="sessions per revision")
    parser.add_argument("--reps", type=int, default=2, help="runs per variant per session")
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per run")
    args = parser.parse_args(argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "runs" / f"compare-{stamp}"
    trees = {"before": workdir / "before", "after": workdir / "after"}
    commits = {key: _export(getattr(args, key), tree) for key, tree in trees.items()}
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in trees}
    for session in range(args.sessions):
        for key, tree in trees.items():
            drained = _session(tree, args.reps, args.tasks, workdir / f"{key}-{session}")
            for run in drained:
                run["session"] = session
                print(f"  {key} #{session + 1}: {json.dumps(run)}", flush=True)
            runs[key].extend(drained)
    (workdir / "runs.json").write_text(json.dumps(runs, indent=1))
    print(f"\n{args.sessions} sessions x {args.reps} runs per variant, {args.tasks} no-op "
          "tasks a run; median [lowest-highest] over the runs")  # fmt: skip
    for key in trees:
        print(f"\n{key}: {commits[key][:12]}")
        for name, values in _summary(runs[key]).items():
            if name.endswith("runs left out"):
                print(f"  {name:40s} {len(values)}")
                continue
            print(f"  {name:40s} {statistics.median(values):6.3f} "
                  f"[{min(values):.3f}-{max(values):.3f}]")  # fmt: skip
    return 0
