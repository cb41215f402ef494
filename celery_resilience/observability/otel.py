"""Optional OpenTelemetry: continue the caller's trace, one span per attempt.

Nothing here needs OpenTelemetry: without ``opentelemetry-api`` (the ``otel`` extra),
:func:`otel_parent` returns ``None`` and :func:`attempt_span` only hands out a fresh span
ID. With it and a configured ``TracerProvider``, each attempt is a span, child of the
message's trace context, whose span ID is the attempt's span ID, so that log records,
the outbound ``traceparent`` and the exported span agree::

    with attempt_span("shop.charge", msg_ctx, {"celery.task_id": task_id}) as span:
        info = AttemptInfo(trace_id=span.trace_id, span_id=span.span_id,
                           sampled=span.sampled, ...)
        with bind_attempt(info):
            ...
        span.set("resilience.verdict", "transient")
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from celery_resilience.observability.redaction import format_exception, redact
from celery_resilience.observability.tracing import TraceContext, new_span_bits, new_span_id

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = ["SpanHandle", "attempt_span", "otel_parent"]

_INSTRUMENTATION = "celery_resilience"
_Primitive = (str, bool, int, float)


def _attribute(value: object) -> AttributeValue | None:
    """``value`` as an OpenTelemetry attribute value; ``None`` drops it."""
    if value is None or isinstance(value, _Primitive):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _Primitive) for v in value):
        items = list(value)
        if len({type(v) for v in items}) <= 1:
            return items
    return str(value)


class SpanHandle:
    """The attempt's span: its IDs, and ``set()`` to add attributes before it ends.

    ``span_id`` is the OpenTelemetry span's ID when one is recorded, else a fresh
    random one; ``recording`` tells which. ``sampled`` is the flag the attempt's calls
    send: the sampler's choice for a recorded span, else the message's. ``attributes``
    holds what was set, in both cases.
    """

    __slots__ = ("_span", "attributes", "recording", "sampled", "span_id", "trace_id")

    def __init__(
        self, ctx: TraceContext, span_id: str, *, span: Span | None, recording: bool
    ) -> None:
        self.trace_id: str = ctx.trace_id
        self.span_id: str = span_id
        self.sampled: bool = ctx.sampled
        self.recording: bool = recording
        self.attributes: dict[str, object] = {}
        self._span = span

    @property
    def context(self) -> TraceContext:
        """The attempt's position in the trace (what outbound calls continue from)."""
        return TraceContext(self.trace_id, self.span_id, self.sampled)

    def set(self, key: str, value: object) -> None:
        """Set an attribute on the span (``None`` values are skipped)."""
        attribute = _attribute(value)
        if attribute is None:
            return
        self.attributes[key] = value
        if self._span is not None:
            self._span.set_attribute(key, attribute)


_missing = False


def _importable() -> None:
    """Raise ImportError at once when OpenTelemetry is known to be missing.

    A failed import searches the whole path again each time, which would cost every
    attempt tens of microseconds where the ``otel`` extra is not installed. So once an
    import has failed, it is tried again only when something has put ``opentelemetry``
    in ``sys.modules`` since.
    """
    if _missing and "opentelemetry" not in sys.modules:
        raise ImportError("opentelemetry is not installed")


def _note_missing() -> None:
    global _missing  # noqa: PLW0603 - one flag per process
    _missing = "opentelemetry" not in sys.modules


#: ``opentelemetry`` itself, then its ``context`` and ``trace`` modules, once imported.
_loaded: tuple[ModuleType, ModuleType, ModuleType] | None = None


def _api() -> tuple[ModuleType, ModuleType] | None:
    """OpenTelemetry's ``context`` and ``trace`` modules, or ``None`` without them.

    Imported once, then kept for every attempt after; imported again when
    ``opentelemetry`` in ``sys.modules`` is no longer the package they came from.
    """
    global _loaded  # noqa: PLW0603 - one set of modules per process, replaced in one step
    loaded = _loaded
    if loaded is not None and sys.modules.get("opentelemetry") is loaded[0]:
        return loaded[1], loaded[2]
    try:
        _importable()
        import opentelemetry  # noqa: PLC0415 - optional dependency
        from opentelemetry import context, trace  # noqa: PLC0415 - optional dependency
    except ImportError:
        _note_missing()
        return None
    _loaded = (opentelemetry, context, trace)
    return context, trace


def otel_parent() -> TraceContext | None:
    """The current OpenTelemetry span's trace context, if there is a valid one.

    Used at publish time so a task continues the trace of whoever sent it. ``None``
    without ``opentelemetry-api`` or outside any span.
    """
    api = _api()
    if api is None:
        return None
    _, trace = api
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return TraceContext(
        format(span_context.trace_id, "032x"),
        format(span_context.span_id, "016x"),
        sampled=span_context.trace_flags.sampled,
    )


def attempt_span(
    name: str,
    ctx: TraceContext,
    attributes: Mapping[str, object] | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
) -> AbstractContextManager[SpanHandle]:
    """Run the block as one attempt's span, child of ``ctx`` (the message's context).

    The span is current inside the block (instrumented calls become its children) and
    ends on exit; an exception leaving the block is recorded, with its message and
    traceback redacted, and sets the status to error. ``tracer_provider`` defaults to
    the global one. Without OpenTelemetry, yields a handle with a fresh span ID.
    """
    return _AttemptSpan(name, ctx, attributes, tracer_provider)


class _AttemptSpan:
    """The context manager :func:`attempt_span` returns (a class, not a generator: it is
    entered once per attempt, and a generator's machinery costs more than its work)."""

    __slots__ = (
        "_api", "_attributes", "_ctx", "_entered", "_handle", "_name", "_provider", "_span",
        "_token",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        ctx: TraceContext,
        attributes: Mapping[str, object] | None,
        provider: TracerProvider | None,
    ) -> None:
        self._name = name
        self._ctx = ctx
        self._attributes = attributes
        self._provider = provider
        self._span: Span | None = None
        self._token: object = None
        self._entered = False

    def __enter__(self) -> SpanHandle:
        if self._entered:  # as a generator's: one block per call
            raise RuntimeError("attempt_span() is entered once; call it again for another")
        self._entered = True
        ctx = self._ctx
        api = _api()
        if api is None:
            handle = self._handle = SpanHandle(ctx, new_span_id(), span=None, recording=False)
            self._set_attributes(handle)
            return handle
        context, trace = self._api = api
        flags = trace.TraceFlags(
            trace.TraceFlags.SAMPLED if ctx.sampled else trace.TraceFlags.DEFAULT
        )
        trace_id = int(ctx.trace_id, 16)
        provider = self._provider or trace.get_tracer_provider()
        span: Span | None = None
        # the API's own providers (no SDK configured) record nothing: no span to start then
        if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            parent = trace.NonRecordingSpan(
                trace.SpanContext(trace_id, int(ctx.span_id, 16), is_remote=True, trace_flags=flags)
            )
            tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=provider)
            span = tracer.start_span(
                self._name, context=trace.set_span_in_context(parent), kind=trace.SpanKind.CONSUMER
            )
        own = span.get_span_context() if span is not None else None
        if (
            span is not None
            and own is not None
            and own.is_valid
            and span.is_recording()
            and own.trace_id == trace_id
        ):
            handle = SpanHandle(ctx, format(own.span_id, "016x"), span=span, recording=True)
            # the sampler may sample what the message did not: outbound calls say what it chose
            handle.sampled = own.trace_flags.sampled
        else:
            # No provider (the API's no-op tracer would hand back the parent) or not
            # sampled: make the attempt's own context current, so its children still hang
            # under it.
            if span is not None:
                span.end()
            span_bits = new_span_bits()
            span = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_bits, False, flags))
            handle = SpanHandle(ctx, f"{span_bits:016x}", span=None, recording=False)
        self._handle = handle
        try:
            self._set_attributes(handle)
        except BaseException:
            span.end()
            raise
        self._span = span
        self._token = context.attach(trace.set_span_in_context(span))
        return handle

    def _set_attributes(self, handle: SpanHandle) -> None:
        for key, value in (self._attributes or {}).items():
            handle.set(key, value)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:  # no OpenTelemetry
            return
        context, trace = self._api
        try:
            if isinstance(exc, Exception) and self._handle.recording:
                details = format_exception(exc)
                message = redact(str(exc))
                span.record_exception(
                    exc,
                    attributes={"exception.message": message, "exception.stacktrace": details},
                )
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {message}")
                )
        finally:
            context.detach(self._token)
            span.end()
