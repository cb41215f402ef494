"""How the demo looks in a terminal: the live view and the closing report (rich)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["live_view", "progress_line", "report_view"]

SIDE_TITLES = {"resilient": "celery-resilience", "baseline": "plain Celery"}
LIVE_ROWS = ("waiting", "retrying", "deferred", "succeeded", "failed", "gave up")
STATE_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow",
               "forced_open": "red", "forced_closed": "green"}
OUTCOME_TITLES = {
    "succeeded": "succeeded",
    "failed": "failed at once (400/404)",
    "gave up": "gave up (out of retries)",
    "unfinished": "still waiting at the end",
}


def _breakers(breakers: dict[str, tuple[str, float]], paused: float) -> Text:
    text = Text("breakers  ")
    for name, (state, remaining) in breakers.items():
        text.append(f"{name} ", style="bold")
        text.append(state.upper().replace("_", "-"), style=STATE_STYLE.get(state, ""))
        if remaining > 0:
            text.append(f" (half-open in {remaining:.1f} s)")
        text.append("   ")
    text.append("limiter ", style="bold")
    text.append(f"crm paused for {paused:.1f} s (429)" if paused > 0 else "crm")
    return text


def _phases(names: list[str], current: str) -> Text:
    text = Text("story     ")
    for i, name in enumerate(names):
        if i:
            text.append(" > ", style="dim")
        text.append(name, style="bold reverse cyan" if name == current else "dim")
    return text


def live_view(
    *,
    elapsed: float,
    phases: list[str],
    phase: str,
    caption: str,
    counts: dict[str, Counter[str]],
    sent: dict[str, int],
    calls: dict[str, int],
    breakers: dict[str, tuple[str, float]],
    paused: float,
) -> RenderableType:
    """The live view: the phase, each side's task states and calls, the breakers."""
    title = Text.assemble(
        ("celery-resilience demo", "bold"), f"   {elapsed:5.1f} s   ",
        (phase, "bold cyan"), f": {caption}",
    )
    table = Table(box=None, padding=(0, 2), show_edge=False)
    table.add_column("tasks")
    sides = list(counts)
    for side in sides:
        table.add_column(SIDE_TITLES[side], justify="right")
    table.add_row("sent", *(str(sent[s]) for s in sides))
    for row in LIVE_ROWS:
        cells = [str(counts[s].get(row, 0)) for s in sides]
        if row == "deferred":
            cells = [c if s == "resilient" else "-" for c, s in zip(cells, sides, strict=True)]
        table.add_row(row, *cells)
    table.add_row(Text("upstream calls", style="bold"), *(str(calls[s]) for s in sides))
    return Group(title, _phases(phases, phase), table, _breakers(breakers, paused))


def progress_line(elapsed: float, phase: str, counts: dict[str, Counter[str]],
                  calls: dict[str, int]) -> str:
    """One line of progress, for a terminal without live updates."""
    parts = []
    for side, c in counts.items():
        parts.append(
            f"{SIDE_TITLES[side]}: {c.get('succeeded', 0)} done, {c.get('retrying', 0)} "
            f"retrying, {c.get('deferred', 0)} deferred, {calls[side]} calls"
        )
    return f"[{elapsed:5.1f} s] {phase:<10}  " + "; ".join(parts)


def _statuses(by_api: dict[str, dict[str, int]]) -> Text:
    total = sum(sum(s.values()) for s in by_api.values())
    text = Text(str(total), style="bold")
    for api, statuses in sorted(by_api.items()):
        ordered = sorted(statuses.items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{n} x {status}" for status, n in ordered)
        text.append(f"\n  {api}: {detail}", style="" if set(statuses) == {"200"} else "yellow")
    return text


def _tasks_table(report: dict[str, Any], sides: list[str]) -> Table:
    table = Table(title="Tasks by outcome", title_justify="left")
    table.add_column("outcome")
    for side in sides:
        table.add_column(SIDE_TITLES[side], justify="right")
    for key, title in OUTCOME_TITLES.items():
        table.add_row(title, *(str(report["tasks"][s][key]) for s in sides))
    table.add_row("sent", *(str(report["tasks"][s]["sent"]) for s in sides), style="bold")
    return table


def _calls_table(report: dict[str, Any], sides: list[str]) -> Table:
    table = Table(title="Upstream calls by phase (from the upstream's request log)",
                  title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for side in sides:
        table.add_column(SIDE_TITLES[side])
    for bound in report["phases"]:
        name = bound["name"]
        table.add_row(
            name, f"{bound['start']:.0f}-{bound['end']:.0f}",
            *(_statuses(report["calls"][s]["by_phase_api_status"][name]) for s in sides),
        )
    table.add_row("total", "", *(str(report["calls"][s]["total"]) for s in sides), style="bold")
    return table


def _findings(report: dict[str, Any], sides: list[str]) -> Text:
    text = Text()
    drain = report["outage_drain"]
    for side in sides:
        d = drain[side]
        text.append(f"{SIDE_TITLES[side]}: ", style="bold")
        text.append(f"of {d['tasks']} billing tasks sent during the outage, {d['succeeded']} "
                    "succeeded")
        if d["unfinished"]:
            text.append(f" and {d['unfinished']} were still waiting at the end", style="red")
        if d["median_after"] is not None:
            text.append(f"; half of all {d['tasks']} were done {d['median_after']:.1f} s after "
                        f"it ended (the last done: {d['max_after']:.1f} s)")
        elif d["tasks"]:
            text.append(f"; half of all {d['tasks']} were not done by the end", style="red")
        burst = report["calls"][side]["crm_burst"]
        if burst["per_second"] is not None:
            text.append(f". The burst of {burst['calls']} CRM syncs reached the CRM at "
                        f"{burst['per_second']:.1f} calls/s (limit: 5/s).")
        text.append("\n")
    return text


def _timeline_table(report: dict[str, Any]) -> Table | Text:
    timeline = report["breaker_timeline"]
    if not timeline:
        return Text("The breakers never left CLOSED.")
    table = Table(title="Breaker transitions", title_justify="left")
    for column in ("at", "phase", "breaker", "transition", "why"):
        table.add_column(column, justify="right" if column == "at" else "left")
    for entry in timeline:
        table.add_row(
            f"{entry['at']:.1f} s", entry["phase"], entry["breaker"],
            Text.assemble((entry["from"], STATE_STYLE.get(entry["from"], "")), " -> ",
                          (entry["to"], STATE_STYLE.get(entry["to"], ""))),
            _why(entry),
        )
    return table


def _why(entry: dict[str, Any]) -> str:
    """Why a breaker moved, in words."""
    move = (entry["from"], entry["to"])
    if move == ("closed", "open"):
        return f"{entry['failure_rate']:.0%} of the last {entry['calls']} calls failed"
    if entry["to"] == "half_open":
        return "open time over: one probe may call"
    if move == ("half_open", "open"):
        return "the probe failed"
    if move == ("half_open", "closed"):
        return "the probe succeeded"
    return "set by an operator" if entry["to"].startswith("forced") else ""


def _trace_view(report: dict[str, Any]) -> RenderableType:
    trace = report["trace"]
    if trace is None:
        return Text("No charge was retried, so there is no trace across attempts to show.")
    table = Table(
        title=f"One task's attempts: charge of {trace['invoice']} (task {trace['task_id']})",
        title_justify="left",
    )
    for column in ("at", "phase", "status", "span ID (traceparent)", "Idempotency-Key"):
        table.add_column(column, justify="right" if column == "at" else "left")
    for a in trace["attempts"]:
        parts = (a["traceparent"] or "").split("-")
        span = parts[2] if len(parts) == 4 else "-"
        table.add_row(f"{a['at']:.1f} s", a["phase"], str(a["status"]), span,
                      a["idempotency_key"] or "-")
    notes = Text(
        f"One trace ID ({trace['trace_id']}) on all {len(trace['attempts'])} attempts"
        f"{'' if trace['one_trace'] else ' (NOT)'}, {trace['spans']} span IDs, "
        f"{'one' if trace['one_key'] else 'SEVERAL'} Idempotency-Key: the API charged once.",
    )
    twin = trace["baseline"]
    if report["baseline"]:
        notes.append(f"\nThe same invoice under plain Celery: {twin['calls']} calls "
                     f"({', '.join(str(s) for s in twin['statuses'])}), {twin['outcome']}.")
    log = trace.get("log") or []
    if log:
        notes.append(f"\nWhat the workers logged under trace {trace['trace_id']}:", style="bold")
        for entry in log:
            notes.append(f"\n  {entry['at']:5.1f} s  {entry['message']}")
    return Group(table, notes)


def report_view(report: dict[str, Any], *, logs: str | None = None) -> RenderableType:
    """The closing report."""
    sides = ["resilient", "baseline"] if report["baseline"] else ["resilient"]
    timing = report["timing"]
    parts: list[RenderableType] = [
        Text(f"\nClosing report ({timing['total']:.0f} s in all, the story "
             f"{timing['story']:.0f} s)", style="bold"),
        _tasks_table(report, sides),
        _calls_table(report, sides),
        _findings(report, sides),
        _timeline_table(report),
        _trace_view(report),
    ]
    counters = report.get("counters")
    if counters:
        parts.append(Text(
            f"celery-resilience workers: {counters.get('attempts', 0)} attempts, "
            f"{counters.get('retries', 0)} retries, {counters.get('deferrals', 0)} deferrals "
            "(a deferral spends no retry)."
        ))
    if logs:
        parts.append(Text(f"Worker logs: {logs} (grep a trace ID there)"))
    return Group(*parts)
