"""One OpenTelemetry span per attempt, continuing the message's trace."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from celery_resilience.observability.otel import attempt_span, otel_parent
from celery_resilience.observability.tracing import TraceContext

MESSAGE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


# --- attempt_span with a TracerProvider -----------------------------------------


def test_one_span_per_attempt(provider, exporter):
    """Each attempt_span() block exports exactly one span, named as asked."""
    for _ in range(2):
        with attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider):
            pass
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["shop.charge", "shop.charge"]
    assert spans[0].kind is SpanKind.CONSUMER


@pytest.mark.parametrize(
    ("sampler", "sampled"),
    [(ALWAYS_ON, True), (ParentBased(ALWAYS_ON), False)],
    ids=["always-on", "parent-based"],
)
def test_the_handle_says_what_the_sampler_chose(exporter, sampler, sampled):
    """Under a message that was not sampled, the attempt's handle (whose flag its outbound
    calls send) says whether its span was sampled after all: a sampler that ignores the
    parent samples it, one that follows the parent does not."""
    tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    unsampled = TraceContext(MESSAGE.trace_id, MESSAGE.span_id, sampled=False)
    try:
        with attempt_span("shop.charge", unsampled, tracer_provider=tracer_provider) as handle:
            pass
    finally:
        tracer_provider.shutdown()
    assert handle.sampled is sampled
    assert handle.context.sampled is sampled
    assert handle.trace_id == MESSAGE.trace_id


def test_span_is_child_of_the_message_context(provider, exporter):
    """The span continues the message's trace, with the message's span as parent."""
    with attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider):
        pass
    (span,) = exporter.get_finished_spans()
    assert hex_id(span.context.trace_id, 32) == MESSAGE.trace_id
    assert span.parent is not None
    assert hex_id(span.parent.span_id, 16) == MESSAGE.span_id


def test_handle_span_id_is_the_exported_span_id(provider, exporter):
    """handle.span_id is the OTel span's own ID, so logs and traces agree."""
    with attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider) as handle:
        assert handle.recording
        assert handle.trace_id == MESSAGE.trace_id
    (span,) = exporter.get_finished_spans()
    assert handle.span_id == hex_id(span.context.span_id, 16) != MESSAGE.span_id
    assert handle.context == TraceContext(MESSAGE.trace_id, handle.span_id)


def test_attributes_given_and_set(provider, exporter):
    """Attributes passed in and set() during the attempt land on the span."""
    attrs = {"celery.task_name": "shop.charge", "resilience.attempt": 2, "skipped": None}
    with attempt_span("shop.charge", MESSAGE, attrs, tracer_provider=provider) as handle:
        handle.set("resilience.verdict", "transient")
        handle.set("resilience.countdown", 3.4)
        handle.set("resilience.none", None)
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "celery.task_name": "shop.charge",
        "resilience.attempt": 2,
        "resilience.verdict": "transient",
        "resilience.countdown": 3.4,
    }


def test_exception_recorded_and_redacted(provider, exporter):
    """An exception leaving the block is recorded, its secrets hidden, status ERROR."""
    with (
        pytest.raises(RuntimeError),
        attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider),
    ):
        raise RuntimeError("401 for https://api.example/v1?api_key=s3cr3t")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    (event,) = span.events
    assert event.name == "exception"
    attributes = dict(event.attributes or {})
    assert attributes["exception.message"] == "401 for https://api.example/v1?api_key=***"
    assert "s3cr3t" not in str(attributes["exception.stacktrace"])
    assert "s3cr3t" not in (span.status.description or "")


def test_span_is_current_inside_the_attempt(provider):
    """Inside the block the attempt's span is current: otel_parent() names it."""
    with attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider) as handle:
        assert otel_parent() == handle.context
    assert otel_parent() is None


def test_one_span_is_entered_once(provider, exporter):
    """A second entry of the same span is refused; the first still ends and detaches."""
    span = attempt_span("shop.charge", MESSAGE, {}, tracer_provider=provider)
    with span as handle:
        with pytest.raises(RuntimeError, match="entered once"), span:
            pass
        assert otel_parent() == handle.context
    assert otel_parent() is None
    assert [s.name for s in exporter.get_finished_spans()] == ["shop.charge"]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_an_attribute_that_fails_leaves_no_span_open_or_current(provider, exporter):
    """An attribute whose text cannot be made ends the span at once, and the context
    before the block stays current."""
    with (
        pytest.raises(RuntimeError),
        attempt_span("shop.charge", MESSAGE, {"odd": _Unprintable()}, tracer_provider=provider),
    ):
        pass
    assert otel_parent() is None
    assert [s.name for s in exporter.get_finished_spans()] == ["shop.charge"]


def test_unsampled_message_records_nothing(provider, exporter):
    """A message whose trace is not sampled gets no exported span, but a fresh span ID."""
    unsampled = TraceContext(MESSAGE.trace_id, MESSAGE.span_id, sampled=False)
    with attempt_span("shop.charge", unsampled, {}, tracer_provider=provider) as handle:
        assert not handle.recording
        assert otel_parent() == handle.context
    assert exporter.get_finished_spans() == ()
    assert handle.span_id != MESSAGE.span_id


# --- without a provider or without OpenTelemetry --------------------------------


def test_no_provider_gives_a_fresh_span_id():
    """With the API's no-op provider, the handle still has a fresh span of the trace."""
    no_op = trace.NoOpTracerProvider()
    with attempt_span("shop.charge", MESSAGE, {"a": 1}, tracer_provider=no_op) as handle:
        handle.set("b", 2)
        assert otel_parent() == handle.context
    assert not handle.recording
    assert re.fullmatch(r"[0-9a-f]{16}", handle.span_id)
    assert handle.span_id != MESSAGE.span_id
    assert handle.attributes == {"a": 1, "b": 2}


def test_without_opentelemetry(monkeypatch):
    """Without opentelemetry installed: no parent, and a working no-op handle."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert otel_parent() is None
    with attempt_span("shop.charge", MESSAGE, {"a": 1}) as handle:
        handle.set("b", "x")
    assert handle.trace_id == MESSAGE.trace_id
    assert handle.span_id != MESSAGE.span_id
    assert handle.attributes == {"a": 1, "b": "x"}


def test_without_opentelemetry_exceptions_pass_through(monkeypatch):
    """The no-op path neither swallows nor changes exceptions."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(KeyError), attempt_span("shop.charge", MESSAGE):
        raise KeyError("x")


class _Absent:
    """A meta-path finder that makes ``opentelemetry`` missing, and counts the searches."""

    def __init__(self) -> None:
        self.searches = 0

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            self.searches += 1
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_a_missing_opentelemetry_is_looked_for_once(monkeypatch):
    """Where OpenTelemetry is not installed, attempts do not search the path for it again."""
    for name in [n for n in sys.modules if n.split(".")[0] == "opentelemetry"]:
        monkeypatch.delitem(sys.modules, name)
    absent = _Absent()
    monkeypatch.setattr(sys, "meta_path", [absent, *sys.meta_path])
    monkeypatch.setattr("celery_resilience.observability.otel._missing", False)
    for _ in range(3):
        assert otel_parent() is None
        with attempt_span("shop.charge", MESSAGE) as handle:
            assert not handle.recording
    assert absent.searches == 1


# --- otel_parent ----------------------------------------------------------------


def test_otel_parent_outside_any_span():
    """With no current span there is no parent to continue."""
    assert otel_parent() is None


def test_otel_parent_inside_a_started_span(provider):
    """Inside a span started by the application, otel_parent() is its context."""
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("publish") as span:
        parent = otel_parent()
    context = span.get_span_context()
    assert parent == TraceContext(hex_id(context.trace_id, 32), hex_id(context.span_id, 16))


def test_otel_parent_carries_the_sampled_flag():
    """An unsampled current span gives an unsampled parent."""
    context = trace.SpanContext(
        int(MESSAGE.trace_id, 16),
        int(MESSAGE.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        assert otel_parent() == TraceContext(MESSAGE.trace_id, MESSAGE.span_id, sampled=False)
