"""One trace ID through every attempt: at the upstream, in the worker's log, in children."""

from __future__ import annotations

import re

import pytest

from tests.helpers.celery_apps import ENV_QUEUE
from tests.helpers.cluster import client_for
from tests.helpers.polling import wait_until

pytestmark = pytest.mark.integration

APP = "tests.apps.trace_app"
#: The Authorization value tr.charge sends (tests/apps/trace_app.py).
SECRET = "Bearer s3cr3t-T0KEN"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def test_one_trace_three_spans_one_idempotency_key(worker, client, upstream, unique):
    """503, 503, 200: one trace ID, three span IDs, one Idempotency-Key per call position."""
    path = f"/{unique}/charge"
    upstream.script(path + "/receipt", [], then=200)
    upstream.script(path, [503, 503], then=200)

    assert client.send_task("tr.charge", args=[path]).get(timeout=30) == 200

    charges = upstream.requests(path)
    receipts = upstream.requests(path + "/receipt")
    assert [c.status for c in charges] == [503, 503, 200]
    parsed = [TRACEPARENT.match(c.header("traceparent") or "") for c in charges + receipts]
    assert all(parsed), [c.header("traceparent") for c in charges]
    assert len({m.group(1) for m in parsed}) == 1, "one trace ID"
    assert len({m.group(2) for m in parsed[:3]}) == 3, "a fresh span per attempt"
    assert len({c.header("Idempotency-Key") for c in charges}) == 1
    assert len({r.header("Idempotency-Key") for r in receipts}) == 1
    assert charges[0].header("Idempotency-Key") != receipts[0].header("Idempotency-Key")


def test_every_line_of_each_attempt_has_trace_and_attempt(worker, client, upstream, unique):
    """The worker's log: each line an attempt wrote carries its trace ID and attempt number."""
    path = f"/{unique}/logged"
    upstream.script(path + "/receipt", [], then=200)
    upstream.script(path, [503], then=200)
    result = client.send_task("tr.charge", args=[path])
    assert result.get(timeout=30) == 200

    text = worker.log_text().splitlines()
    own = [line for line in text if result.id in line and "ForkPoolWorker" in line]
    assert own, "the attempts' lines"
    trace_ids = {m.group(1) for m in re.finditer(r"trace_id=([0-9a-f]{32})", "\n".join(own))}
    assert len(trace_ids) == 1, "every line of the task names its trace"
    (trace_id,) = trace_ids
    traced = [line for line in text if trace_id in line]
    assert all(line in traced for line in own)
    for line in traced:
        assert re.search(rf"trace_id={trace_id} span_id=[0-9a-f]{{16}} attempt=[12]\]", line), line
    charged = [line for line in traced if f"charging {path}" in line]
    assert [re.search(r"attempt=(\d)", line).group(1) for line in charged] == ["1", "2"]


def test_the_next_task_of_the_process_inherits_no_attempt(
    worker_factory, env, celery_client, queue
):
    """Celery's lines after an attempt carry its trace while its request is current; a
    task of Celery's own that the same pool process runs next is outside any attempt,
    also after an attempt that ended as IGNORED (for which Celery calls no
    ``after_return``)."""
    own = {**env, ENV_QUEUE: queue}  # not the module's shared node's queue
    node = worker_factory(APP, env=own, concurrency=1)
    client = client_for(celery_client, own)
    client.send_task("tr.ignored")
    wait_until(lambda: "ignoring myself" in node.log_text(), timeout=30, what="tr.ignored")
    assert client.send_task("tr.untraced").get(timeout=30) == ""
    text = node.log_text().splitlines()
    (ignoring,) = [line for line in text if "ignoring myself" in line]
    trace_id = re.search(r"trace_id=([0-9a-f]{32}) ", ignoring).group(1)
    celerys = [line for line in text if "tr.ignored[" in line and "ForkPoolWorker" in line]
    assert celerys, "Celery's line about the ignored attempt"
    assert all(f"trace_id={trace_id} " in line for line in celerys), celerys
    untraced = [line for line in text if "tr.untraced[" in line or "untraced work" in line]
    assert len(untraced) >= 2, text
    assert not any("trace_id=" in line for line in untraced), untraced


def test_no_secret_reaches_the_logs(worker, client, upstream, unique):
    """Authorization and Cookie values never appear in the worker's log."""
    path = f"/{unique}/secret"
    upstream.script(path + "/receipt", [], then=200)
    upstream.script(path, [400])
    with pytest.raises(Exception, match="400"):
        client.send_task("tr.charge", args=[path]).get(timeout=30)
    text = worker.log_text()
    assert f"charged {path}" in text
    assert SECRET.split()[1] not in text
    assert "c00kie-SECRET" not in text


def test_a_child_task_continues_the_trace(worker, client):
    """A task published inside a resilient task carries the parent's trace ID."""
    parent = client.send_task("tr.parent")
    child_id = parent.get(timeout=20)
    child_header = client.AsyncResult(child_id).get(timeout=20)
    match = TRACEPARENT.match(child_header or "")
    assert match, child_header
    parent_trace = re.search(rf"{parent.id}\].*trace_id=([0-9a-f]{{32}})", worker.log_text()).group(
        1
    )
    assert match.group(1) == parent_trace


@pytest.mark.parametrize(
    "hostile",
    [
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-abc\n-FORGED",
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 600,
        "\x1b[31m",
    ],
)
def test_hostile_trace_headers_are_replaced(worker, client, hostile):
    """A malformed, all-zero, oversized or control-character header becomes a fresh trace."""
    trace_id = client.send_task("tr.echo", headers={"traceparent": hostile}).get(timeout=20)
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert trace_id not in hostile
    assert "FORGED" not in worker.log_text()
