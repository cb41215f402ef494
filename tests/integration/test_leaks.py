"""No planted secret reaches any sink of a real worker (issue 16, item 8).

A task fails with a secret planted in its exception as HTTP clients plant them (``requests``'
``SSLError`` wrapping a ``urllib3`` error with the key in its URL, a header in an
exception's text, a chain of causes, a retried transient error) and in its keyword
arguments. Then every sink is searched for the secret: the result backend (the raw Redis
value), the RETRY tracebacks Celery stored on the way, Flower's task (API and HTML page),
the worker's log, the dead letter (in Redis, and the CLI's text and JSON views) and the
OpenTelemetry spans the worker exported. The exhaustive part is the property test of the
redactor itself (tests/test_redaction.py); this is the end-to-end check of the wiring.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from celery_resilience.state.deadletters import DeadLetter, DeadLetters
from celery_resilience.state.keys import KeySpace
from example_project.upstream import Upstream
from tests.helpers.flower import FlowerProcess
from tests.helpers.inspection import Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration

APP = "tests.apps.leaks_app"


class Sinks:
    """The rig: a worker sending events, Flower watching it, and the files it writes."""

    def __init__(self, rig: Rig, flower: FlowerProcess, logs: Path) -> None:
        self.rig = rig
        self.flower = flower
        self.spans = logs / "spans.jsonl"
        self.retries = logs / "retries.txt"


@pytest.fixture(scope="module")
def sinks(
    redis_server: RedisServer, upstream_server: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sinks]:
    """One worker (-E) of the leaks app and one Flower, for the module."""
    logs = tmp_path_factory.mktemp("leaks")
    env = {
        "RESILIENCE_TEST_SPANS": str(logs / "spans.jsonl"),
        "RESILIENCE_TEST_RETRIES": str(logs / "retries.txt"),
    }
    with (
        worker_rig(
            redis_server, upstream_server, logs, app=APP, extra_args=["-E"], extra_env=env
        ) as rig,
        FlowerProcess(APP, env=rig.env, logfile=logs / "flower.log") as flower,
    ):
        wait_until(
            lambda: rig.worker.nodename in flower.get("/api/workers", refresh=1),
            timeout=30,
            what="flower sees the worker",
        )
        yield Sinks(rig, flower, logs)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _flower_task(flower: FlowerProcess, task_id: str) -> dict[str, Any] | None:
    task: dict[str, Any] | None = flower.get("/api/tasks").get(task_id)
    return task if task is not None and task["state"] == "FAILURE" else None


def _letter(letters: DeadLetters, task_id: str) -> DeadLetter | None:
    return next((x for x in letters.list(100) if x.task_id == task_id), None)


@pytest.mark.parametrize("form", ["ssl", "header", "chained", "transient"])
def test_a_planted_secret_reaches_no_sink(sinks: Sinks, form: str) -> None:
    rig, flower = sinks.rig, sinks.flower
    secret = f"Zq{uuid.uuid4().hex}9"
    client = rig.client()
    result = client.send_task("leak.fail", kwargs={"form": form, "api_key": secret})
    with pytest.raises(Exception):  # noqa: B017 - the kind is not the point here
        result.get(timeout=60, propagate=True)

    found: dict[str, str] = {}
    found["flower task (API)"] = json.dumps(
        wait_until(lambda: _flower_task(flower, result.id), timeout=30, what="FAILURE in Flower")
    )
    found["flower task info"] = json.dumps(flower.get(f"/api/task/info/{result.id}"))
    page = requests.get(f"{flower.url}/task/{result.id}", timeout=10)
    assert page.ok
    found["flower task page"] = page.text

    backend = rig.redis.client(1)
    raw = backend.get(f"celery-task-meta-{result.id}")
    assert raw is not None
    found["result backend"] = raw.decode()
    meta = json.loads(raw)
    assert meta["status"] == "FAILURE"
    found["result.traceback"] = result.traceback or ""

    letters = DeadLetters(rig.store.client, KeySpace(rig.prefix))
    letter = wait_until(lambda: _letter(letters, result.id), timeout=15, what="the dead letter")
    stored = rig.store.client.xrange(letters.key, min=letter.id, max=letter.id)
    letter_fields = json.loads(stored[0][1][b"letter"])
    # The JSON copies of the arguments are the task's own message, kept for a requeue:
    # never shown, searched separately below.
    kept = {k: letter_fields.pop(k) for k in ("args_json", "kwargs_json")}
    found["dead letter (Redis)"] = json.dumps(letter_fields)
    for args in (
        ["list"],
        ["list", "--json"],
        ["show", letter.id],
        ["show", letter.id, "--json"],
        ["requeue", letter.id, "--dry-run"],
    ):
        shown = rig.cli("dead-letters", *args)
        assert shown.returncode == 0, shown.stderr
        found[f"cli dead-letters {' '.join(args[:2])}"] = shown.stdout + shown.stderr
    status = rig.cli("status", "--json")
    found["cli status"] = status.stdout + status.stderr

    wait_until(
        lambda: (
            result.id in _read(rig.worker.logfile)
            and sum(1 for _ in _read(sinks.spans).splitlines())
        ),
        timeout=15,
        what="the worker's log and spans",
    )
    found["worker log"] = _read(rig.worker.logfile)
    found["otel spans"] = _read(sinks.spans)
    found["retry tracebacks"] = _read(sinks.retries)
    if form == "transient":
        assert result.id in found["retry tracebacks"]

    leaked = [where for where, text in found.items() if secret in text]
    assert not leaked, f"the secret reached: {leaked}"
    # Sanity: the sinks do carry the failure, redacted.
    assert "***" in found["result backend"] + found["dead letter (Redis)"]
    assert secret in kept["kwargs_json"]  # kept intact for a requeue, shown nowhere
