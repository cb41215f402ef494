"""``python -m benchmarks case NAME``: one degraded-upstream case, resilient side alone.

A case of :mod:`benchmarks.degraded` run ``--runs`` times in a row against the library in
this checkout, each run on fresh queues, workers and upstream records, as the scenario
runs it (2 nodes x 2 prefork processes, 50 tasks a second for 20 s, default policies).
Run to run, a case moves about as much as a change to the throttle does, so a change is
judged on the median and range of several runs, and on how many meet the case's targets::

    python3 dev.py bench case overload --runs 6
    python3 dev.py bench case partial40 --runs 4 --tenths

``--tenths`` also prints, per tenth of the breaker's window, the calls sent, accepted,
failed and shed by the throttle, read from the state Redis while the run goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from benchmarks.apps import resilient
from benchmarks.degraded import (
    CASES,
    CONCURRENCY,
    NODES,
    DegradedRun,
    measure_case,
    summary,
    targets_met,
)
from benchmarks.params import FULL
from benchmarks.rig import SIDES, Rig
from celery_resilience.state.keys import DEFAULT_PREFIX, KeySpace

__all__ = ["main"]

HERE = Path(__file__).resolve().parent


class _Tenths:
    """The breaker window's counts per tenth, as the largest value each field reached
    (a tenth is pruned once it leaves the window)."""

    def __init__(self, client: redis.Redis, key: str, window: float) -> None:
        self.client, self.key, self.width = client, key, 1000 * window / 10
        self.seen: dict[str, int] = {}
        self.stopped = threading.Event()

    def poll(self) -> None:
        while not self.stopped.wait(0.1):
            for field, value in self.client.hgetall(self.key).items():
                name = field.decode() if isinstance(field, bytes) else str(field)
                self.seen[name] = max(self.seen.get(name, 0), int(value))

    def lines(self) -> list[str]:
        tenths: dict[int, dict[str, int]] = {}
        for field, count in self.seen.items():
            begins, what = field.split(":", 1)
            tenths.setdefault(int(begins), {})[what] = count
        if not tenths:
            return ["  (no breaker window seen)"]
        first, out = min(tenths), []
        for start in sorted(tenths):
            c = tenths[start]
            sent, ok = c.get("s", 0) + c.get("f", 0), c.get("s", 0)
            parity = "odd " if round(start / self.width) % 2 else "even"
            out.append(
                f"  {(start - first) / 1000:5.1f} s {parity} sent {sent:3} accepted {ok:3} "
                f"failed {c.get('f', 0):3} shed {c.get('x', 0):3} "
                f"sent/accepted {sent / ok if ok else float('nan'):.2f}"
            )
        return out


@contextmanager
def _watching(client: redis.Redis, key: str, window: float, on: bool) -> Iterator[_Tenths]:
    tenths = _Tenths(client, key, window)
    thread = threading.Thread(target=tenths.poll, daemon=True) if on else None
    if thread is not None:
        thread.start()
    try:
        yield tenths
    finally:
        tenths.stopped.set()
        if thread is not None:
            thread.join(timeout=5)


def _spread(values: Sequence[float], digits: int = 3) -> str:
    """Median [lowest-highest]."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def main(argv: Sequence[str]) -> int:
    """Run the case; 0 when every run finished (whatever its figures)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks case", description=__doc__)
    parser.add_argument("case", choices=[c.key for c in CASES])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--tenths", action="store_true", help="print each tenth's counts")
    args = parser.parse_args(argv)
    case = next(c for c in CASES if c.key == args.case)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "runs" / f"case-{case.key}-{stamp}"
    keys = KeySpace(resilient.app.conf.get("resilience_key_prefix") or DEFAULT_PREFIX)
    breaker = resilient.call.resilience_options(overrides=False).breaker
    if breaker is None:
        raise RuntimeError("the degraded cases' resilient task has no breaker")
    window_key = keys.breaker(breaker.name)[1]
    runs: list[DegradedRun] = []
    with Rig(workdir) as rig:
        for i in range(args.runs):
            rig.reset()
            queue = f"case.{case.key}.{i}"
            with (
                rig.nodes(SIDES["resilient"], queue, count=NODES, concurrency=CONCURRENCY),
                _watching(rig.state_client, window_key, breaker.window, args.tenths) as seen,
            ):
                run = measure_case(
                    rig, resilient.call, case, prefix=f"/case/{case.key}/{i}", queue=queue,
                    params=FULL,
                )  # fmt: skip
            runs.append(run)
            print(f"run {i}: {summary(run)}", flush=True)
            if args.tenths:
                print("\n".join(seen.lines()), flush=True)
    met = sum(targets_met(case, run) for run in runs)
    per_task = _spread([r.calls_per_task for r in runs])
    print(
        f"{case.key}, {len(runs)} runs: calls per task {per_task}, "
        f"goodput {_spread([r.goodput for r in runs], 1)}/s, done during "
        f"{_spread([float(r.done_during) for r in runs], 0)}; every target met in {met} of "
        f"{len(runs)} (logs in {workdir})"
    )
    return 0
