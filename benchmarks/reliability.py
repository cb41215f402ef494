"""Reliability: faults injected into real workers, and what became of every task.

For each fault of :mod:`benchmarks.faults`, on fresh private servers and two worker
nodes of two prefork processes: ``n`` tasks that should succeed and a few that the upstream
refuses (403), each POSTing to a path of its own with a planted secret
(:mod:`benchmarks.apps.reliable`). Once every task has a final state, or the bounded drain
is over, each task is judged:

- *completed exactly once*: its expected final state (SUCCESS; FAILURE for a refused
  one), one success logged at most, and its effect applied as often as expected at the
  upstream (once; never for a refused one), counting one effect per ``Idempotency-Key``;
- *lost*: no final state (PENDING, RETRY, STARTED) after the drain;
- *duplicated*: its effect applied twice (two keys), or a success logged twice;
- *failed*: a final state other than the expected one.

Then every sink is searched for the secret: the result backend (every value), the workers'
logs, Flower's task API (``/api/tasks``: the workers send task events), the dead-letter
stream (raw) and the CLI's text and JSON views (``resilience dead-letters list``/``show``,
``resilience status --json``).

Some rows alone, printed only: ``python -m benchmarks.reliability publish_denied --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.faults import FAULTS, Fault
from benchmarks.measure import effects
from benchmarks.params import FULL, QUICK, Params
from benchmarks.report import Outcome, load_average, section_facts
from benchmarks.rig import Rig
from benchmarks.stack import TERMINAL, Stack, running
from celery_resilience.state.keys import KeySpace
from example_project.upstream import RequestRecord, Upstream

__all__ = ["SECTION_TITLE", "judge", "main", "run_fault", "run_reliability", "search"]

SECTION_TITLE = "Reliability"
NODES, CONCURRENCY = 2, 2
PREFIX = "/reliability"
DEFAULT_KEYS = KeySpace("resilience")
LETTERS_WAIT = 10.0  # seconds the refused tasks' dead letters get to land after the drain


def _secret() -> str:
    return f"sk_live_{secrets.token_hex(12)}"


def judge(
    *,
    normal: Sequence[str],
    refused: Sequence[str],
    states: dict[str, str],
    paths: dict[str, str],
    applied: dict[str, tuple[int, int]],
    logs: str,
) -> dict[str, Any]:
    """Each task's verdict (see the module's docstring), counted, with the IDs of misses."""
    successes = dict.fromkeys(states, 0)
    for found in re.finditer(r"\[([0-9a-f-]{36})\] succeeded in", logs):
        if found[1] in successes:
            successes[found[1]] += 1
    verdicts: dict[str, list[str]] = {"completed": [], "lost": [], "duplicated": [], "failed": []}
    repeated = 0
    for task_id in [*normal, *refused]:
        expected = "SUCCESS" if task_id in normal else "FAILURE"
        done, raw = applied.get(paths[task_id], (0, 0))
        repeated += raw - done
        if done > 1 or successes[task_id] > 1:
            verdicts["duplicated"].append(task_id)
        elif states[task_id] not in TERMINAL:
            verdicts["lost"].append(task_id)
        elif states[task_id] == expected and done == (1 if expected == "SUCCESS" else 0):
            verdicts["completed"].append(task_id)
        else:
            verdicts["failed"].append(task_id)
    return {
        **{k: len(v) for k, v in verdicts.items()},
        "repeated": repeated,
        "misses": {k: v for k, v in verdicts.items() if k != "completed" and v},
    }


def search(secret: str, sinks: dict[str, str]) -> dict[str, int]:
    """How often ``secret`` appears in each sink that holds it."""
    return {name: text.count(secret) for name, text in sinks.items() if secret in text}


def _letters(stack: Stack) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The dead-letter stream's entries ([] while it cannot be read)."""
    client = stack.state_client()
    try:
        return list(client.xrange(DEFAULT_KEYS.dead_letters()))
    except Exception:
        return []
    finally:
        client.close()


def _wait_letters(stack: Stack, count: int, timeout: float) -> int:
    """Wait (bounded) until the stream holds ``count`` letters; return how many it holds."""
    deadline = time.monotonic() + timeout
    while len(found := _letters(stack)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(found)


def _sinks(stack: Stack) -> dict[str, str]:
    """The text of every sink: result backend, logs, dead letters (raw and through the CLI)."""
    found = {"result backend": stack.backend_text(), "worker logs": stack.logs()}
    stream = _letters(stack)
    if stream:
        found["dead letters (Redis)"] = "\n".join(
            json.dumps({k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
            for _, fields in stream
        )
    if stack.flower is not None:
        try:
            found["flower /api/tasks"] = json.dumps(stack.flower.get("/api/tasks"))
        except Exception as exc:
            found["flower /api/tasks"] = f"unreadable: {exc!r}"
    found["cli dead-letters list"] = stack.cli("dead-letters", "list")
    found["cli dead-letters list --json"] = stack.cli("dead-letters", "list", "--json")
    if stream:
        first = stream[0][0].decode()
        found["cli dead-letters show"] = stack.cli("dead-letters", "show", first)
        found["cli dead-letters show --json"] = stack.cli("dead-letters", "show", first, "--json")
    found["cli status --json"] = stack.cli("status", "--json")
    return found


def _planted(records: Sequence[RequestRecord], secret: str) -> bool:
    """Whether the upstream saw the secret in both places it was planted."""
    return any(secret in r.query and secret in (r.header("Authorization") or "") for r in records)


def run_fault(
    fault: Fault, upstream: Upstream, workdir: Path, *, tasks: int, refused: int
) -> dict[str, Any]:
    """One row: fresh servers and nodes, the tasks, the fault, the drain, the verdicts."""
    secret = _secret()
    prefix = f"{PREFIX}/{fault.key}"
    upstream.reset()
    began, load_before = time.monotonic(), os.getloadavg()[0]
    with running(workdir / fault.key, fault.spec, secret=secret) as stack:
        stack.start_nodes(NODES, concurrency=CONCURRENCY)
        stack.start_flower()
        fault.script(upstream, prefix, tasks)
        upstream.script(f"{prefix}/refused", [], then=403)
        url = upstream.url
        normal_calls = [(f"t{i}", f"{url}{prefix}/t{i}") for i in range(tasks)]
        refused_calls = [(f"r{i}", f"{url}{prefix}/refused/r{i}") for i in range(refused)]
        normal = stack.send(normal_calls)
        rejected = stack.send(refused_calls)
        injected = fault.inject(stack, upstream, prefix)
        ids = [*normal, *rejected]
        states = stack.drain(ids, timeout=fault.drain)
        seconds = time.monotonic() - began
        records = [r for r in upstream.requests() if r.path.startswith(prefix + "/")]
        if fault.key == "retry_after":
            injected = sum(1 for r in records if r.status == 429)
        paths = {
            task_id: call[1].removeprefix(url)
            for task_id, call in zip(ids, [*normal_calls, *refused_calls], strict=True)
        }
        verdicts = judge(
            normal=normal, refused=rejected, states=states, paths=paths,
            applied=effects(records), logs=stack.logs(),
        )  # fmt: skip
        letters = _wait_letters(stack, refused, LETTERS_WAIT)
        sinks = _sinks(stack)
        (workdir / fault.key / "sinks.json").write_text(json.dumps(sinks, indent=1))
        seen = json.dumps([r.to_json() for r in records], indent=1)
        (workdir / fault.key / "requests.json").write_text(seen.replace(secret, "<planted>"))
        leaks = search(secret, sinks)
        replaced = stack.replaced
        broker = stack.broker_facts()
    figures = {
        "title": fault.title,
        "conf": fault.conf_note,
        "injected": injected,
        "sent": len(ids),
        "refused": refused,
        **verdicts,
        "letters": letters,
        "leaked": sum(leaks.values()),
        "leaked_in": leaks,
        "planted": _planted(records, secret),
        "calls": len(records),
        "replaced": replaced,
        "broker": broker,
        "seconds": round(seconds, 1),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "states": {s: list(states.values()).count(s) for s in set(states.values())},
    }
    print(f"  reliability {fault.key}: " + ", ".join(
        f"{k} {v}" for k, v in figures.items() if k not in ("title", "conf")
    ), flush=True)  # fmt: skip
    return figures


def run_reliability(rig: Rig, params: Params, only: Sequence[str] = ()) -> Outcome:
    """Every fault (or those named in ``only``), one after the other."""
    load_before, began, started = load_average(), time.monotonic(), time.time()
    rows: dict[str, dict[str, Any]] = {}
    for fault in FAULTS:
        if only and fault.key not in only:
            continue
        try:
            rows[fault.key] = run_fault(
                fault, rig.upstream, rig.workdir / "reliability",
                tasks=params.reliability_tasks, refused=params.reliability_refused,
            )  # fmt: skip
        except Exception as exc:  # a row that could not run says why; the others go on
            traceback.print_exc()
            rows[fault.key] = {"title": fault.title, "error": f"{type(exc).__name__}: {exc}"}
    args = "--only reliability" + (" --quick" if params.reliability_tasks < 40 else "")
    facts = section_facts(args=args, started=started, began=began, load_before=load_before,
                          redis_server=rig.broker.executable)  # fmt: skip
    return Outcome("reliability", data={"rows": rows, "facts": dict(facts)},
                   section=render_section(rows, facts))  # fmt: skip


def render_section(rows: dict[str, dict[str, Any]], facts: list[tuple[str, str]]) -> str:
    """The Markdown section: facts, one row per fault, and what each miss was."""
    told = "\n\n".join(__doc__.split("\n\n")[1:-1]).replace(":mod:", "")
    lines = [f"## {SECTION_TITLE}", "", told, "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += [
        "",
        "| fault | settings | faults injected | tasks sent (refused) | completed exactly once "
        "| failed | lost | duplicated | leaked secrets found | repeated POSTs, same key "
        "| dead letters / refused | nodes replaced | seconds |",
        "| --- | --- " + "| ---: " * 11 + "|",
    ]
    notes = []
    for key, f in rows.items():
        if "error" in f:
            lines.append(f"| {f['title']} | — | not run: {f['error']} |" + " |" * 10)
            continue
        leaked = f"{f['leaked']}" if f["planted"] else f"{f['leaked']} (secret not planted)"
        lines.append(
            f"| {f['title']} | {f['conf']} | {f['injected']} | {f['sent']} ({f['refused']}) "
            f"| {f['completed']} | {f['failed']} | {f['lost']} | {f['duplicated']} | {leaked} "
            f"| {f['repeated']} | {f['letters']}/{f['refused']} | {f['replaced']} "
            f"| {f['seconds']:.0f} |"
        )
        for kind, ids in f["misses"].items():
            notes.append(f"`{key}`: {kind}: {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}")
        if f["lost"] and f.get("broker"):
            facts_ = ", ".join(f"{k} {v}" for k, v in f["broker"].items())
            notes.append(f"`{key}`: the Redis broker after the drain: {facts_}")
        if f["leaked_in"]:
            where = ", ".join(f"{k} ({v})" for k, v in f["leaked_in"].items())
            notes.append(f"`{key}`: the secret was found in {where}")
    if notes:
        lines += ["", "Misses (task IDs; worker logs and data under `benchmarks/runs/`):", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the faults named on the command line (all without one); print the section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability")
    parser.add_argument("faults", nargs="*", help=f"of: {', '.join(f.key for f in FAULTS)}")
    parser.add_argument("--quick", action="store_true", help="12 + 2 tasks a row")
    args = parser.parse_args(argv)
    unknown = set(args.faults) - {f.key for f in FAULTS}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with Rig(Path(__file__).resolve().parent / "runs" / stamp) as rig:
        print(run_reliability(rig, QUICK if args.quick else FULL, only=args.faults).section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
