"""OpenTelemetry around real task attempts: one span per attempt, with the outcome."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import json
    from celery import Celery
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from celery_resilience import TransientError, resilient_task

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    app = Celery("otel", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    failures = [TransientError("a"), TransientError("b")]

    @resilient_task(app=app, name="otel.flaky", shared=False)
    def flaky():
        if failures:
            raise failures.pop(0)
        return "ok"

    with trace.get_tracer("caller").start_as_current_span("web request") as parent:
        assert flaky.delay().get() == "ok"
        caller = format(parent.get_span_context().trace_id, "032x")
    spans = [
        {"name": s.name, "trace": format(s.context.trace_id, "032x"),
         "parent": format(s.parent.span_id, "016x") if s.parent else None,
         "attributes": dict(s.attributes)}
        for s in exporter.get_finished_spans() if s.name != "web request"
    ]
    print(json.dumps({"caller": caller, "spans": spans}))
    """
)


def test_one_span_per_attempt_in_the_callers_trace():
    """Three attempts: three spans in the caller's trace, with verdict and attempt."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    spans = data["spans"]
    assert len(spans) == 3
    assert {s["trace"] for s in spans} == {data["caller"]}
    assert [s["attributes"]["attempt"] for s in spans] == [1, 2, 3]
    assert [s["attributes"]["verdict"] for s in spans] == ["transient", "transient", "success"]
    # eager mode skips the countdowns, but decides them as a worker does
    countdowns = [s["attributes"].get("countdown") for s in spans]
    assert countdowns[2] is None
    assert all(c is not None and c > 0 for c in countdowns[:2])
