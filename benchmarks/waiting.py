"""Waiting work: deliveries per task, messages held by workers, worker memory.

Each case runs for plain Celery (where it means something), for "previous" (every wait a
countdown held by a worker: ``resilience_hold_max=0``, ``resilience_park_after=0``) and
for "now" (the defaults: a rate-limit slot reserved as the message arrives and held up to
5 s; waits above 5 s parked in the broker's Redis), on fresh nodes each time:

1. rate: 200 tasks, ``RateLimit("api", "10/s")``, 2 nodes x 2 processes;
2. backlog: 10,000 tasks to a healthy upstream behind ``RateLimit("bulk", "100/s")``;
3. outage: 200 tasks, the upstream answers 503 for 20 s, the default breaker;
4. Retry-After: 20 tasks, each answered once 429 with ``Retry-After: 10``, on a Redis
   broker whose ``visibility_timeout`` is 3 s.

A delivery is a ``task_prerun`` in a pool process (each logs a line, ``BENCH_PRERUN=1``).
While a run lasts, a sampler reads every 0.5 s the length of kombu's Redis transport
``unacked`` hash (messages delivered to a worker and not yet acknowledged) and the RSS of
every worker process (main and pool).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from benchmarks.apps import plain, resilient
from benchmarks.apps.config import ENV_CONF, ENV_PRERUN, PRERUN_MARK
from benchmarks.measure import busiest_window, by_path, steady_rate
from benchmarks.params import Params
from benchmarks.report import Outcome, load_average, section_facts
from benchmarks.rig import SIDES, TERMINAL, Node, Rig, Side, rss_kib
from example_project.upstream import Response

__all__ = ["SECTION_TITLE", "Sampler", "deliveries", "run_waiting"]

NODES, CONCURRENCY = 2, 2
SECTION_TITLE = "Waiting work"
#: kombu's Redis transport keeps every delivered, unacknowledged message in this hash.
UNACKED_KEY = "unacked"
SAMPLE_EVERY = 0.5
RETRY_AFTER = 10
VISIBILITY = 3.0
_MIB = 1024.0


@dataclass(frozen=True)
class Variant:
    """Who runs the tasks: a side and the settings its workers get."""

    key: str
    title: str
    side: Side
    conf: dict[str, Any]


VARIANTS = (
    Variant("plain", "plain Celery", SIDES["plain"], {}),
    Variant("previous", "previous (hold_max 0, park_after 0)", SIDES["resilient"],
            {"resilience_hold_max": 0, "resilience_park_after": 0}),
    Variant("now", "now (defaults)", SIDES["resilient"], {}),
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One workload: its tasks by variant (a variant without one is not run)."""

    key: str
    title: str
    tasks: int
    reps: int
    timeout: float
    task_for: dict[str, Any]
    prepare: Callable[[Rig, str, int], None] = lambda rig, prefix, n: None
    conf: dict[str, Any] = field(default_factory=dict)
    target_rate: float | None = None
    #: tasks run (to a path of their own) before the run, so that the first RSS sample
    #: is taken after every pool process has imported and connected what a task needs
    warm: int = 0


def _outage(seconds: float) -> Callable[[Rig, str, int], None]:
    def prepare(rig: Rig, prefix: str, n: int) -> None:
        rig.upstream.phases(prefix, [(seconds, 503), (None, 200)])

    return prepare


def _retry_after(rig: Rig, prefix: str, n: int) -> None:
    for i in range(n):
        rig.upstream.script(f"{prefix}/{i}", [Response(429, retry_after=RETRY_AFTER)], then=200)


def _cases(params: Params) -> list[Case]:
    limited = {"plain": plain.call_limited, "previous": resilient.call_limited,
               "now": resilient.call_limited}  # fmt: skip
    called = {"plain": plain.call, "previous": resilient.call, "now": resilient.call}
    bulk = {"previous": resilient.call_bulk, "now": resilient.call_bulk}
    n1, n2, n3, n4 = (params.waiting_rate_tasks, params.waiting_bulk_tasks,
                      params.waiting_outage_tasks, params.waiting_ra_tasks)  # fmt: skip
    outage = params.outage_seconds
    return [
        Case("rate", f"1 rate: {n1} tasks, `RateLimit(\"api\", \"10/s\")`", n1,
             params.waiting_reps, n1 / 10 * 4 + 60, limited, target_rate=10.0),
        Case("outage", f"3 outage: {n3} tasks, upstream 503 for {outage:g} s, default breaker",
             n3, params.waiting_reps, outage + 150, called, _outage(outage)),
        Case("retry_after", f"4 Retry-After: {n4} tasks, `Retry-After: {RETRY_AFTER}`, "
             f"visibility_timeout {VISIBILITY:g} s", n4, params.waiting_reps, 120.0, called,
             _retry_after, {"broker_transport_options": {"visibility_timeout": VISIBILITY}}),
        Case("backlog", f"2 backlog: {n2:,} tasks, `RateLimit(\"bulk\", \"100/s\")`", n2,
             params.waiting_bulk_reps, min(n2 / 100 * 4 + 60, 900.0), bulk, target_rate=100.0,
             warm=4 * NODES * CONCURRENCY),
    ]  # fmt: skip


class Sampler:
    """Samples the broker's unacked messages and the workers' RSS every 0.5 s (bounded)."""

    def __init__(self, broker_url: str, nodes: Sequence[Node], *, limit: float) -> None:
        self._client = redis.Redis.from_url(broker_url)
        self._nodes = list(nodes)
        self._stop = threading.Event()
        self._limit = limit
        self._thread = threading.Thread(target=self._loop, name="waiting-sampler", daemon=True)
        self.held: list[int] = []
        self.rss_kib: list[int] = []
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def sample(self) -> None:
        """One sample of both."""
        self.held.append(int(self._client.hlen(UNACKED_KEY)))
        self.last = self.by_process()
        self.first = self.first or self.last
        self.rss_kib.append(sum(self.last.values()))

    def by_process(self) -> dict[str, int]:
        """``VmRSS`` (KiB) of each worker process, by ``node:main`` or ``node:pid``."""
        found: dict[str, int] = {}
        for node in self._nodes:
            for pid in (node.pid, *node.pool_pids()):
                rss = rss_kib(pid)
                if rss is not None:
                    found[f"{node.nodename}:{'main' if pid == node.pid else pid}"] = rss
        return found

    def _loop(self) -> None:
        deadline = time.monotonic() + self._limit
        while not self._stop.wait(SAMPLE_EVERY) and time.monotonic() < deadline:
            self.sample()

    def __enter__(self) -> Sampler:
        """Take the first sample and start sampling."""
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop sampling; take the last sample."""
        self._stop.set()
        self._thread.join(10.0)
        self.sample()
        self._client.close()


def deliveries(logfiles: Sequence[Path], ids: Sequence[str]) -> list[int]:
    """How often each task's ``task_prerun`` was logged, in the order of ``ids``."""
    pattern = re.compile(rf"{re.escape(PRERUN_MARK)} ([0-9a-f-]+)")
    seen: Counter[str] = Counter()
    for logfile in logfiles:
        seen.update(pattern.findall(logfile.read_text(errors="replace")))
    return [seen[i] for i in ids]


def _wait(rig: Rig, ids: Sequence[str], timeout: float) -> dict[str, str]:
    """Every task's state once all are terminal or ``timeout`` has passed (polled gently)."""
    pause = 0.25 if len(ids) <= 500 else 2.0
    deadline = time.monotonic() + timeout
    while True:
        states = rig.states(ids)
        if all(s in TERMINAL for s in states.values()) or time.monotonic() >= deadline:
            return states
        time.sleep(pause)


def _run(rig: Rig, case: Case, variant: Variant, rep: int) -> dict[str, Any]:
    rig.reset()
    label = f"{case.key}.{variant.key}.{rep}"
    queue, prefix = f"waiting.{label}", f"/waiting/{label}"
    n, task = case.tasks, case.task_for[variant.key]
    case.prepare(rig, prefix, n)
    env = {ENV_PRERUN: "1", ENV_CONF: json.dumps({**case.conf, **variant.conf})}
    load_before = os.getloadavg()[0]
    with rig.nodes(variant.side, queue, count=NODES, concurrency=CONCURRENCY, env=env) as nodes:
        if case.warm:
            warm = [(f"{rig.upstream.url}{prefix}-warm/{i}",) for i in range(case.warm)]
            _wait(rig, rig.publish(task, warm, queue=queue), 60.0)
            time.sleep(1.0)  # the limiter's slots of the warm-up pass
        with Sampler(rig.broker.url(0), nodes, limit=case.timeout + 60) as sampler:
            began = time.monotonic()
            ids = rig.publish(task, [(f"{rig.upstream.url}{prefix}/{i}",) for i in range(n)],
                              queue=queue)  # fmt: skip
            states = _wait(rig, ids, case.timeout)
            seconds = time.monotonic() - began
        records = rig.records(prefix)
        logs = [node.child.logfile for node in nodes]
    counts = deliveries(logs, ids)
    starts = [r.start for r in records]
    ok = [sum(1 for r in group if r.status is not None and 200 <= r.status < 300)
          for group in by_path(records).values()]  # fmt: skip
    found = {
        "tasks": n,
        "seconds": round(seconds, 1),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "deliveries_mean": sum(counts) / n,
        "deliveries_p50": statistics.median(counts),
        "deliveries_max": max(counts),
        "calls": len(records),
        "lost": n - list(states.values()).count("SUCCESS"),
        "twice": sum(1 for c in ok if c > 1),
        "rate": steady_rate(starts),
        "worst": busiest_window(starts, 1.0) if starts else 0,
        "held_max": max(sampler.held),
        "held_samples": len(sampler.held),
        "rss_start_mib": sampler.rss_kib[0] / _MIB,
        "rss_growth_mib": (sampler.rss_kib[-1] - sampler.rss_kib[0]) / _MIB,
        "rss_max_growth_mib": (max(sampler.rss_kib) - sampler.rss_kib[0]) / _MIB,
        "rss_kib_first": sampler.first,
        "rss_kib_last": sampler.last,
    }
    print(f"  waiting {label}: " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in found.items() if not k.startswith("rss_kib")
    ), flush=True)  # fmt: skip
    return found


def run_waiting(rig: Rig, params: Params) -> Outcome:
    """Every case for every variant that has its task, ``waiting_reps`` times (the backlog
    ``waiting_bulk_reps`` times), repetition by repetition: rate, outage, Retry-After,
    backlog, then rate, outage, Retry-After again."""
    load_before, began, started = load_average(), time.monotonic(), time.time()
    cases = _cases(params)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c.key: {v.key: [] for v in VARIANTS if v.key in c.task_for} for c in cases
    }
    for rep in range(max(c.reps for c in cases)):
        for case in cases:
            if rep < case.reps:
                for variant in VARIANTS:
                    if variant.key in case.task_for:
                        runs[case.key][variant.key].append(_run(rig, case, variant, rep))
    args = "--only waiting" + (" --quick" if params.waiting_bulk_tasks < 10_000 else "")
    facts = section_facts(args=args, started=started, began=began, load_before=load_before,
                          redis_server=rig.broker.executable)  # fmt: skip
    section = render_section(cases, runs, facts)
    return Outcome("waiting", data={"runs": runs, "facts": dict(facts)}, section=section)


# -- the table -------------------------------------------------------------------------


def _spread(values: Sequence[float], digits: int) -> str:
    """The median, and every run's value when there are several."""
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) < 2:
        return middle
    return f"{middle} ({' / '.join(f'{v:.{digits}f}' for v in values)})"


def _deliveries_cell(found: list[dict[str, Any]]) -> str:
    mean = _spread([f["deliveries_mean"] for f in found], 2)
    p50 = "/".join(f"{f['deliveries_p50']:g}" for f in found)
    top = "/".join(str(f["deliveries_max"]) for f in found)
    return f"{mean}; p50 {p50}; max {top}"


def _ints(found: list[dict[str, Any]], key: str) -> str:
    return " / ".join(str(f[key]) for f in found)


_MEASURES: dict[str, list[tuple[str, Callable[[list[dict[str, Any]]], str], str]]] = {
    "rate": [
        ("deliveries per task: mean (runs); p50; max", _deliveries_cell, "≤ 1.2 (1.05)"),
        ("aggregate rate / 10/s", lambda f: _spread([x["rate"] / 10.0 for x in f], 3),
         "1.00 ± 0.03"),
        ("worst 1-s window (calls)", lambda f: _ints(f, "worst"), "≤ 11"),
        ("messages held unacked (max of samples)", lambda f: _ints(f, "held_max"), "—"),
    ],
    "backlog": [
        ("messages held unacked (max of samples)", lambda f: _ints(f, "held_max"), "≤ 50"),
        ("worker RSS growth after a warm-up, 2 nodes, main + pool (MiB)",
         lambda f: _spread([x["rss_growth_mib"] for x in f], 1), "≤ 20 MB"),
        ("deliveries per task: mean (runs); p50; max", _deliveries_cell, "≤ 1.2"),
        ("aggregate rate / 100/s", lambda f: _spread([x["rate"] / 100.0 for x in f], 3),
         "1.00 ± 0.03"),
        ("tasks lost / run twice", lambda f: " / ".join(f"{x['lost']}, {x['twice']}" for x in f),
         "0, 0"),
    ],
    "outage": [
        ("deliveries per task: mean (runs); p50; max", _deliveries_cell, "≤ 2.2"),
        ("tasks lost / run twice", lambda f: " / ".join(f"{x['lost']}, {x['twice']}" for x in f),
         "0, 0"),
        ("messages held unacked (max of samples)", lambda f: _ints(f, "held_max"), "—"),
    ],
    "retry_after": [
        ("deliveries per task: mean (runs); p50; max", _deliveries_cell, "≤ 2.2"),
        ("tasks lost / run twice", lambda f: " / ".join(f"{x['lost']}, {x['twice']}" for x in f),
         "0, 0"),
    ],
}  # fmt: skip
_ORDER = ("rate", "backlog", "outage", "retry_after")


def _growth(found: dict[str, Any]) -> str:
    first, last = found["rss_kib_first"], found["rss_kib_last"]
    parts = []
    for name in sorted(last):
        grown = (last[name] - first.get(name, last[name])) / _MIB
        parts.append(f"{name.split('@')[0]} {name.split(':')[1]} {grown:+.1f}")
    return ", ".join(parts)


def render_section(
    cases: list[Case],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    facts: list[tuple[str, str]],
) -> str:
    """The Markdown section: facts, the table by case and measure, and every run."""
    by_key = {c.key: c for c in cases}
    lines = [f"## {SECTION_TITLE}", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += [
        "",
        "| case | measure | " + " | ".join(v.title for v in VARIANTS) + " | target |",
        "| --- | --- | " + " | ".join("---:" for _ in VARIANTS) + " | --- |",
    ]
    for key in _ORDER:
        case = by_key[key]
        for measure, cell, target in _MEASURES[key]:
            cells = [cell(runs[key][v.key]) if runs[key].get(v.key) else "not run"
                     for v in VARIANTS]  # fmt: skip
            lines.append(f"| {case.title} | {measure} | " + " | ".join(cells) + f" | {target} |")
    for variant, found in runs["backlog"].items():
        for rep, f in enumerate(found, 1):
            lines += ["", f"Backlog, {variant}, run {rep}: RSS growth by worker process "
                      f"(MiB, first sample to last): {_growth(f)}."]  # fmt: skip
    lines += [
        "",
        "Every run (load average over 1 minute at its start and end):",
        "",
        "| case | variant | run | tasks | seconds | load | deliveries (mean) | held (max) "
        "| RSS start (MiB) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for key in _ORDER:
        for variant, found in runs[key].items():
            for rep, f in enumerate(found, 1):
                lines.append(
                    f"| {key} | {variant} | {rep} | {f['tasks']} | {f['seconds']:.0f} | "
                    f"{f['load'][0]:.2f} → {f['load'][1]:.2f} | {f['deliveries_mean']:.2f} | "
                    f"{f['held_max']} | {f['rss_start_mib']:.0f} |"
                )
    return "\n".join(lines) + "\n"
