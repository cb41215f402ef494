"""The Grafana dashboard and the Prometheus alert rules ask only for what the exporter has.

A real prefork worker with metrics on runs tasks that succeed, retry, fail for good, give
up, wait for a rate limiter (deferred, and in place), pause it with a 429 and meet an
open breaker; its ``/metrics`` is scraped, and every metric name and label that a
dashboard panel, a template variable or an alert rule uses must be there (and every
metric the exporter has must be shown somewhere). ``promtool`` checks the rules, runs
their unit tests and parses every dashboard query, where it exists (``.ci/promtool``
fetches it; otherwise those checks are skipped with the reason).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from example_project.upstream import Response, Upstream
from tests.helpers import REPO_ROOT
from tests.helpers.inspection import Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "celery-resilience.json"
RULES = REPO_ROOT / "deploy" / "prometheus" / "celery-resilience-rules.yml"
RULE_TESTS = REPO_ROOT / "deploy" / "prometheus" / "celery-resilience-rules.test.yml"
PREFIX = "celery_resilience_"
#: Grafana's variables, replaced by something PromQL accepts before promtool parses a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range_s": "3600",
    "$__range": "1h",
    "$task": ".*",
}

METRIC = re.compile(rf"\b{PREFIX}[a-z_]+\b")
SELECTOR = re.compile(rf"\b({PREFIX}[a-z_]+)\s*\{{([^}}]*)\}}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-z_]+)\s*,\s*(\w+)\s*\)")

Exposed = dict[str, dict[str, set[str]]]


# -- what the dashboard and the rules ask for -------------------------------------------


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    board = dashboard()
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def rule_queries() -> list[str]:
    """Every expression of the alert rules."""
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def uses(expr: str) -> dict[str, set[str]]:
    """The metrics an expression reads, each with the labels it selects or groups by."""
    found: dict[str, set[str]] = {m: set() for m in METRIC.findall(expr)}
    for metric, label in LABEL_VALUES.findall(expr):
        found.setdefault(metric, set()).add(label)
    for metric, matchers in SELECTOR.findall(expr):
        found[metric] |= {name for name, _, _ in MATCHER.findall(matchers)}
    grouped = {
        label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label
    }
    for labels in found.values():
        labels |= {label for label in grouped if label}
    return found


def literal_values(expr: str) -> list[tuple[str, str, str]]:
    """``(metric, label, value)`` of every equality matcher with a literal value."""
    return [
        (metric, name, value)
        for metric, matchers in SELECTOR.findall(expr)
        for name, op, value in MATCHER.findall(matchers)
        if op == "=" and "$" not in value
    ]


# -- what the exporter has ---------------------------------------------------------------


def exposed(text: str) -> Exposed:
    """Sample name -> label -> the values seen, from a ``/metrics`` page."""
    out: Exposed = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = out[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return out


@pytest.fixture(scope="module")
def rig(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Rig, int]]:
    """A prefork worker (-c 2), metrics summed over its pool and served on a port."""
    base = tmp_path_factory.mktemp("dashboards")
    directory = base / "prom"
    directory.mkdir()
    port = free_port()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "RESILIENCE_TEST_METRICS": "1",
        "RESILIENCE_TEST_METRICS_PORT": str(port),
    }
    with worker_rig(redis_server, upstream_server, base, extra_env=env) as found:
        yield found, port


@pytest.fixture(scope="module")
def scraped(rig: tuple[Rig, int], upstream_server: Upstream) -> Exposed:
    """Run every kind of outcome through the worker, then scrape its exporter."""
    worker, port = rig
    u = "/dashboards"
    upstream_server.script(f"{u}/ok", [], then=200)
    upstream_server.script(f"{u}/flaky", [503, 503], then=200)
    upstream_server.script(f"{u}/gone", [], then=404)
    upstream_server.script(f"{u}/down", [], then=503)
    upstream_server.script(f"{u}/busy", [Response(429, retry_after=1)], then=200)
    upstream_server.script(f"{u}/limited", [], then=200)
    upstream_server.script(f"{u}/outage", [], then=503)
    client = worker.client()
    finishing = [
        client.send_task("res.call", args=[f"{u}/ok"]),
        client.send_task("res.call", args=[f"{u}/flaky"]),
        client.send_task("res.call", args=[f"{u}/gone"]),
        client.send_task("res.call3", args=[f"{u}/down"]),
        client.send_task("res.limited", args=[f"{u}/busy"]),
        *(client.send_task("res.limited", args=[f"{u}/limited/{i}"]) for i in range(6)),
    ]
    # three failures open 'inspect-outage' (open 30 s): their retries are deferred by it
    for i in range(3):
        client.send_task("inspect.outage", args=[f"{u}/outage/{i}"])
    for result in finishing:
        result.get(timeout=90, propagate=False)
    # two tasks due at the same moment (an ETA skips the consumer's reservation): one is
    # granted, the other's slot is an interval away and is waited for in place
    due = [
        client.send_task("res.limited", args=[f"{u}/limited/due{i}"], countdown=1) for i in (1, 2)
    ]
    for result in due:
        result.get(timeout=30, propagate=False)
    url = f"http://127.0.0.1:{port}/metrics"

    def page() -> Exposed:
        return exposed(requests.get(url, timeout=5).text)

    def complete() -> Exposed | None:
        found = page()
        deferred = found.get(f"{PREFIX}deferrals_total", {}).get("reason", set())
        gauges = (
            f"{PREFIX}limiter_wait_seconds",
            f"{PREFIX}backend_fallback_active",
            f"{PREFIX}limiter_in_place_seconds_total",
        )
        ready = {"breaker", "rate_limit"} <= deferred and all(g in found for g in gauges)
        return found if ready else None

    return wait_until(
        complete, timeout=60, interval=0.5, what="deferrals by breaker and rate limit, gauges"
    )


# -- the checks --------------------------------------------------------------------------


def test_the_dashboard_is_well_formed():
    """Unique panel IDs, a grid position each, every query on the datasource variable, and
    every variable a query names is defined (or Grafana's own)."""
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    defined = {variable["name"] for variable in board["templating"]["list"]}
    assert defined == {"datasource", "task"}
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            named = set(re.findall(r"\$(\w+)", target["expr"]))
            assert named <= defined | {"__rate_interval", "__range", "__range_s"}, target
    titles = {panel["title"] for panel in board["panels"]}
    for wanted in (
        "Breaker state",
        "Attempts by outcome",
        "Deferrals by reason",
        "Deferral waits by reason (p95)",
        "Limiter grants",
        "Limiter pauses",
        "Time in fallback",
        "Retry countdown distribution",
    ):
        assert wanted in titles


def test_the_alert_rules_cover_breakers_fallback_and_dead_letters():
    """The three alerts the operators asked for, each with a ``for`` and a summary."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    alerts = {rule["alert"]: rule for rule in rules}
    for name in (
        "CeleryResilienceBreakerOpen",
        "CeleryResilienceStoreInFallback",
        "CeleryResilienceDeadLettersGrowing",
    ):
        assert alerts[name]["for"], name
        assert alerts[name]["annotations"]["summary"], name
    assert "celery_resilience_breaker_state" in alerts["CeleryResilienceBreakerOpen"]["expr"]


@pytest.mark.integration
@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_and_label_used_is_exposed(scraped: Exposed, source: str):
    """Each metric a query reads is on the worker's /metrics page, with every label the
    query selects or groups by, and every literal label value it matches."""
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    problems = []
    for expr in queries:
        for metric, labels in uses(expr).items():
            if metric not in scraped:
                problems.append(f"{metric} is not exposed (in {expr})")
                continue
            missing = labels - set(scraped[metric])
            if missing:
                problems.append(f"{metric} has no label {sorted(missing)} (in {expr})")
        for metric, label, value in literal_values(expr):
            if value not in scraped.get(metric, {}).get(label, set()):
                problems.append(f'{metric}{{{label}="{value}"}} never appeared (in {expr})')
    assert problems == []


@pytest.mark.integration
def test_every_exposed_metric_is_on_the_dashboard(scraped: Exposed):
    """Nothing the exporter counts is left off the dashboard."""
    shown = {m for expr in dashboard_queries() for m in METRIC.findall(expr)}
    families = {
        re.sub(r"_(bucket|sum|count|created)$", "", name)
        for name in scraped
        if name.startswith(PREFIX) and not name.endswith("_created")
    }
    shown_families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    assert families - shown_families == set()


@pytest.mark.integration
def test_the_worker_exposed_each_kind_of_outcome(scraped: Exposed):
    """The run was rich enough to mean something: every verdict, a give-up, dead letters,
    a limiter grant, pause and wait in place, and the breaker gauge."""
    verdicts = scraped[f"{PREFIX}attempts_total"]["verdict"]
    assert {"success", "transient", "permanent", "rate_limited", "deferred"} <= verdicts
    assert "res.call3" in scraped[f"{PREFIX}gave_up_total"]["task"]
    assert {"permanent", "transient"} <= scraped[f"{PREFIX}dead_letters_total"]["verdict"]
    assert "api" in scraped[f"{PREFIX}limiter_grants_total"]["name"]
    assert "api" in scraped[f"{PREFIX}limiter_pauses_total"]["name"]
    assert "api" in scraped[f"{PREFIX}limiter_in_place_seconds_total"]["name"]
    assert "inspect-outage" in scraped[f"{PREFIX}breaker_state"]["name"]
    assert "le" in scraped[f"{PREFIX}retry_countdown_seconds_bucket"]


def _promtool() -> str:
    """$PROMTOOL, else promtool on PATH, else the one ``.ci/promtool`` unpacked before."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    unpacked = cache / "celery-resilience" / "prometheus" / "usr" / "bin" / "promtool"
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found and os.access(unpacked, os.X_OK):
        found = str(unpacked)
    if not found:
        pytest.skip(
            "promtool not found: run `.ci/promtool` (it unpacks Debian's prometheus package) "
            "and set PROMTOOL to the path it prints, or install prometheus"
        )
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_the_rules_and_runs_their_tests():
    """``promtool check rules`` and ``promtool test rules`` (the alerts fire when, and only
    when, they should)."""
    promtool = _promtool()
    checked = _run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path):
    """Each dashboard query, Grafana's variables filled in, is valid PromQL."""
    promtool = _promtool()
    rules = []
    for n, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values")):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
