"""Scenarios 6 (overhead) and 7 (Redis round trips, worker memory).

No-op tasks are queued first, then one worker node (prefork, 2 processes) drains them.
Between 90 % and 10 % of the queue left (the worker's start and the last tasks left out)
two figures are taken: the drain rate (tasks per second, wall clock) and the CPU time the
worker, its pool and both Redis servers used per task, which other load on the machine
moves much less. Each variant runs ``overhead_reps`` times, interleaved, on a fresh node.
Round trips are the commands clients send to the state Redis (``MONITOR``, over a run of
its own); memory is ``VmRSS`` of the pool processes after the run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.apps import plain, resilient
from benchmarks.attempts import cpu_per_attempt
from benchmarks.monitor import ClientCommands
from benchmarks.params import Params
from benchmarks.report import Outcome, Row, fmt, ratio
from benchmarks.rig import SIDES, Node, Rig, cpu_seconds

__all__ = ["VARIANTS", "Drain", "drain", "round_trips", "run_overhead"]

CONCURRENCY = 2
#: Throughput and CPU per task, each side by side with plain Celery: (at least, at most).
TARGETS = {"resilient": (0.98, 1.03), "resilient+gates": (0.95, 1.10)}
#: Script calls timed one kind at a time for the Redis-side cost of each.
SCRIPT_CALLS = 5_000
#: (label, side, task): the resilient no-op without gates, and with breaker and limiter.
VARIANTS: tuple[tuple[str, str, Any], ...] = (
    ("plain", "plain", plain.noop),
    ("resilient", "resilient", resilient.noop),
    ("resilient+gates", "resilient", resilient.noop_gated),
)
GATED = ("resilient", "resilient+gates")
_OURS = frozenset({"info", "config|resetstat", "flushall", "monitor", "echo"})


@dataclass(frozen=True)
class Drain:
    """One drained queue, between the 90 % and 10 % marks: tasks per second (wall clock)
    and CPU milliseconds per task, in all and by process (worker, pool, broker Redis,
    state Redis); pool RSS (KiB) at the first mark and at the end."""

    rate: float
    cpu_ms: float
    cpu_split: dict[str, float]
    rss_early: tuple[int, ...]
    rss_end: tuple[int, ...]


def _cpu(rig: Rig, node: Node) -> dict[str, float]:
    pids = {"worker": [node.pid], "pool": node.pool_pids()}
    pids["broker redis"], pids["state redis"] = ([p] for p in rig.redis_pids())
    return {role: cpu_seconds(ps) for role, ps in pids.items()}


def drain(rig: Rig, node: Node, queue: str, total: int) -> Drain:
    """Watch ``queue`` empty (bounded); measure between the 90 % and 10 % marks."""
    marks: list[tuple[float, int, dict[str, float]]] = []
    rss_early: list[int] = []
    deadline = time.monotonic() + total / 20 + 60
    while time.monotonic() < deadline:
        left = rig.queue_length(queue)
        if len(marks) < 2 and left <= total * (0.9 if not marks else 0.1):
            marks.append((time.monotonic(), left, _cpu(rig, node)))
            if len(marks) == 1:
                rss_early = node.pool_rss_kib()
        if left == 0:
            break
        time.sleep(0.02)
    time.sleep(1.0)  # the prefetched last few finish
    rate = cpu_ms = float("nan")
    split: dict[str, float] = {}
    if len(marks) == 2 and marks[1][1] < marks[0][1] and marks[1][0] > marks[0][0]:
        (t1, n1, c1), (t2, n2, c2) = marks
        rate = (n1 - n2) / (t2 - t1)
        split = {role: (c2[role] - c1[role]) / (n1 - n2) * 1000 for role in c1}
        cpu_ms = sum(split.values())
    return Drain(rate, cpu_ms, split, tuple(rss_early), tuple(node.pool_rss_kib()))


def _one(rig: Rig, label: str, side: str, task: Any, rep: int, total: int) -> Drain:
    rig.reset()
    queue = f"overhead.{label}.{rep}"
    rig.publish(task, [()] * total, queue=queue)
    with rig.nodes(SIDES[side], queue, count=1, concurrency=CONCURRENCY, ready=False) as nodes:
        return drain(rig, nodes[0], queue, total)


def _script_name(sha: str) -> str:
    from celery_resilience.state.scripts import SCRIPT_NAMES, script_source  # noqa: PLC0415

    for name in SCRIPT_NAMES:
        if hashlib.sha1(script_source(name).encode()).hexdigest() == sha:
            return name
    return sha


def round_trips(rig: Rig, label: str, task: Any, total: int) -> tuple[Counter[str], Counter[str]]:
    """Commands clients sent to the state Redis (MONITOR; EVALSHA also by script, as
    ``evalsha:<script>``), and the commands it ran in all, scripts' included (``INFO
    commandstats``), during a run of ``total`` tasks."""
    rig.reset()
    rig.state_client.config_resetstat()
    queue = f"round_trips.{label}"
    rig.publish(task, [()] * total, queue=queue)
    resilient_side = SIDES["resilient"]
    with (
        ClientCommands(rig.urls.state) as seen,
        rig.nodes(resilient_side, queue, count=1, concurrency=CONCURRENCY, ready=False) as nodes,
    ):
        drain(rig, nodes[0], queue, total)
    executed = Counter({k: v for k, v in rig.state_commands().items() if k not in _OURS})
    sent = seen.counts + Counter({f"evalsha:{_script_name(h)}": n for h, n in seen.scripts.items()})
    return sent, executed


def _per_second(cost: float, unit: float) -> str:
    """How many a second one core serves at ``cost`` (``unit`` of them a second); "—"
    when nothing was measured."""
    return f"{unit / cost:,.0f}" if cost > 0 else "—"


def script_costs(
    rig: Rig, task: Any, calls: int = SCRIPT_CALLS, reps: int = 5
) -> dict[str, list[float]]:
    """Redis-side microseconds per call of ``gate.lua`` and ``record.lua`` (``INFO
    commandstats``), each run alone ``calls`` times with ``task``'s breaker and limiter,
    ``reps`` times, sorted; ``record`` is a success reported at once (what a failure, a
    lease, a probe or a late count costs)."""
    from celery_resilience.core.gates import GateAsk, OutcomeReport  # noqa: PLC0415
    from celery_resilience.state.redis import RedisStore  # noqa: PLC0415

    rig.reset()
    store = RedisStore(rig.state_client)
    breaker, limiter = task.breaker, task.limiter
    costs: dict[str, list[float]] = {"gate": [], "record": []}
    for _ in range(reps):
        for name, call in (
            ("gate", lambda i: store.gate(
                GateAsk(holder=f"b:{i}", breaker=breaker, limiter=limiter))),
            ("record", lambda i: store.record(
                OutcomeReport(holder=f"b:{i}", breaker=breaker, breaker_outcome="success"))),
        ):  # fmt: skip
            call(-1)  # the script loaded
            rig.state_client.config_resetstat()
            for i in range(calls):
                call(i)
            stats = rig.state_client.info("commandstats").get("cmdstat_evalsha", {})
            costs[name].append(float(stats.get("usec_per_call", float("nan"))))
    return {name: sorted(values) for name, values in costs.items()}


def run_overhead(rig: Rig, params: Params) -> Outcome:
    """Every variant, interleaved, ``overhead_reps`` times; then the round trips."""
    total = params.overhead_tasks
    runs: dict[str, list[Drain]] = {label: [] for label, _, _ in VARIANTS}
    for rep in range(params.overhead_reps):
        for label, side, task in VARIANTS:
            run = _one(rig, label, side, task, rep, total)
            runs[label].append(run)
            print(f"  overhead {label} #{rep + 1}: {run.rate:.0f} tasks/s, {run.cpu_ms:.3f} "
                  f"CPU ms/task {run.cpu_split}, RSS {run.rss_end} KiB", flush=True)  # fmt: skip
    cpu = {label: statistics.median(r.cpu_ms for r in rs) for label, rs in runs.items()}
    trips = {
        label: round_trips(rig, label, task, min(total, 2_000))
        for label, side, task in VARIANTS
        if side == "resilient"
    }
    with rig.upstream_paused():  # each no-op through the same in-process loop
        alone = {
            label: cpu_per_attempt(task, attempts=min(total, 3_000), reps=params.overhead_reps + 2)
            for label, _, task in VARIANTS
        }
    own = {label: alone[label] - alone["plain"] for label in GATED}
    rows = []
    median = {label: statistics.median(r.rate for r in rs) for label, rs in runs.items()}
    for label in GATED:
        share = median[label] / median["plain"]
        least = TARGETS[label][0]
        rows.append(Row("6 overhead", f"no-op tasks/s (wall clock, median of "
                        f"{params.overhead_reps}), {label}", fmt(median["plain"], 0),
                        fmt(median[label], 0), ratio(median[label], median["plain"]),
                        f"≥ {least:.2f}", share >= least))  # fmt: skip
    for label in GATED:
        share = cpu[label] / cpu["plain"]
        most = TARGETS[label][1]
        rows.append(Row("6 overhead", f"CPU ms per no-op task, worker + Redis (median), "
                        f"{label}; ratio = resilient / plain", fmt(cpu["plain"], 3),
                        fmt(cpu[label], 3), f"{share:.2f}", f"≤ {most:.2f}",
                        share <= most))  # fmt: skip
    otel = "with" if importlib.util.find_spec("opentelemetry") else "without"
    for label in GATED:
        rows.append(Row("6 overhead", f"celery-resilience's own CPU per attempt, in-process "
                        f"(beyond plain Celery's {alone['plain']:.0f} µs through the same loop), "
                        f"{otel} OpenTelemetry installed (best of {params.overhead_reps + 2}), "
                        f"{label}", "—", f"{own[label]:.0f} µs", "—", "—", None))  # fmt: skip
    attempts = min(total, 2_000)
    for label in GATED:
        sent, executed = trips[label]
        gates = sent["evalsha:gate"] / attempts
        late = sent["evalsha:record"] / attempts
        every = sum(v for k, v in sent.items() if ":" not in k) / attempts
        rows.append(Row("7 Redis", f"round trips to the state Redis per attempt, {label}: "
                        "gate.lua, record.lua (successes counted late), in all", "0",
                        f"{gates:.2f}, {late:.3f} ({every:.3f} with connection set-up)",
                        "—", "1, ≤ 0.1" if label == "resilient+gates" else "0, 0",
                        gates <= (1 if label == "resilient+gates" else 0)
                        and late <= (0.1 if label == "resilient+gates" else 0)))  # fmt: skip
        rows.append(Row("7 Redis", f"… commands run in Redis per attempt, scripts' included, "
                        f"{label}", "0", f"{sum(executed.values()) / attempts:.2f}",
                        "—", "—", None))  # fmt: skip
    gated_task = next(task for label, _, task in VARIANTS if label == "resilient+gates")
    costs = script_costs(rig, gated_task)
    usec = {name: statistics.median(values) for name, values in costs.items()}
    for name, values in costs.items():
        rows.append(Row("7 Redis", f"Redis-side µs per call, {name}.lua (breaker + limiter; "
                        f"median of {len(values)} x {SCRIPT_CALLS:,} calls alone, range)", "—",
                        f"{usec[name]:.1f} µs ({values[0]:.1f} to {values[-1]:.1f})", "—", "—",
                        None))  # fmt: skip
    sent, _ = trips["resilient+gates"]
    # a gated attempt calls gate.lua only when it holds no grant ahead
    per_attempt = (
        usec["gate"] * sent["evalsha:gate"] + usec["record"] * sent["evalsha:record"]
    ) / attempts
    process = statistics.median(  # ms per attempt
        r.cpu_split.get("state redis", 0.0) for r in runs["resilient+gates"]
    )
    rows.append(Row("7 Redis", "gated attempts a second one Redis core serves: by the scripts' "
                    "µs per attempt; by the state Redis process's CPU per attempt (its network "
                    "I/O included)", "—",
                    f"{_per_second(per_attempt, 1e6)}; {_per_second(process, 1e3)}",
                    "—", "—", None))  # fmt: skip
    rss = {label: max(runs[label][-1].rss_end, default=0) for label, _, _ in VARIANTS}
    for label in GATED:
        rows.append(Row("7 memory", f"pool process VmRSS after {total:,} tasks, {label}",
                        f"{rss['plain'] / 1024:.1f} MiB", f"{rss[label] / 1024:.1f} MiB",
                        ratio(rss[label], rss["plain"]), "—", None))  # fmt: skip
    spread = {label: [round(r.rate) for r in rs] for label, rs in runs.items()}
    cpus = {label: [round(r.cpu_ms, 3) for r in rs] for label, rs in runs.items()}
    split = {
        label: {role: round(statistics.median(r.cpu_split.get(role, 0.0) for r in rs), 3)
                for role in rs[0].cpu_split}
        for label, rs in runs.items()
    }  # fmt: skip
    growth = {
        label: [e - s for s, e in zip(runs[label][-1].rss_early, runs[label][-1].rss_end,
                                      strict=False)]
        for label, _, _ in VARIANTS
    }  # fmt: skip
    notes = [
        f"Overhead: {total:,} no-op tasks queued, then drained by 1 node x {CONCURRENCY} "
        f"prefork processes, {params.overhead_reps} interleaved runs per variant, measured "
        f"between 90 % and 10 % of the queue left. Tasks/s per run: {spread}; CPU ms per "
        f"task per run: {cpus}; by process (median, ms): {split}. The wall-clock rate moves "
        "with whatever else the machine runs; CPU per task much less so. `resilient+gates` "
        "has a breaker and a limiter that never says no.",
        f"Round trips: commands that clients sent to the state Redis, seen with MONITOR over "
        f"a separate run of {attempts:,} tasks: "
        f"{ {label: dict(sent) for label, (sent, _) in trips.items()} }; commands run inside "
        f"Redis (INFO commandstats): "
        f"{ {label: dict(executed) for label, (_, executed) in trips.items()} }.",
        f"Memory: max VmRSS over the pool processes (each ran about half the tasks); growth "
        f"from the 90 % mark to the end, KiB per process: {growth}.",
    ]
    data = {
        "script_usec": costs,
        "runs": {label: [asdict(r) for r in rs] for label, rs in runs.items()},
        "own_cpu_us": own,
        "round_trips": {label: {"sent": dict(s), "executed": dict(e)}
                        for label, (s, e) in trips.items()},
    }  # fmt: skip
    return Outcome("overhead", rows, notes, data)
