"""Trace context (W3C ``traceparent``) and the context of the running attempt.

A logical task has one trace ID for all of its attempts; each attempt gets a fresh span
ID. The Celery layer binds an :class:`AttemptInfo` around the task body::

    ctx = parse_traceparent(headers.get("traceparent")) or new_trace()
    info = AttemptInfo(trace_id=ctx.trace_id, span_id=new_span_id(),
                       task_id=request.id, task_name=task.name, attempt=3,
                       sampled=ctx.sampled)
    with bind_attempt(info):
        run_body()          # logs, outbound HTTP calls: all see current_attempt()

Binding follows ``structlog.contextvars``: context variables, set for the block and
reset to the previous value on exit, so nested attempts (an eager task run inside
another task) restore the outer one, and threads or asyncio tasks never see each
other's attempt. A thread started inside an attempt does not inherit it; run its
function in ``contextvars.copy_context()`` to keep the attempt (and its call counter).

Values from outside (task IDs and names can be chosen by whoever publishes) are made
log-safe by :func:`safe_token` when an :class:`AttemptInfo` is built; trace and span
IDs are checked to be lowercase hex, not all zeros.
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import re
import secrets
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery_resilience.core.process import random_bits

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "TRACEPARENT_HEADER",
    "AttemptInfo",
    "TraceContext",
    "bind_attempt",
    "current_attempt",
    "hold_attempt",
    "new_span_bits",
    "new_span_id",
    "new_trace",
    "next_unsafe_call_index",
    "parse_traceparent",
    "safe_text",
    "safe_token",
]

TRACEPARENT_HEADER = "traceparent"
"""Name of the W3C trace-context header, in message headers and on HTTP requests."""

_MAX_TRACEPARENT = 512
_HEADER_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")
_SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_V00_LENGTH = 55
_MIN_LIMIT = 16
_DIGEST_CHARS = 10


def _check_trace_id(value: object) -> None:
    if not isinstance(value, str) or not _TRACE_ID_RE.fullmatch(value) or value == _ZERO_TRACE_ID:
        raise ValueError(f"trace_id must be 32 lowercase hex digits, not all zeros: {value!r}")


def _check_span_id(value: object) -> None:
    if not isinstance(value, str) or not _SPAN_ID_RE.fullmatch(value) or value == _ZERO_SPAN_ID:
        raise ValueError(f"span_id must be 16 lowercase hex digits, not all zeros: {value!r}")


def _traceparent(trace_id: str, span_id: str, *, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def new_span_bits() -> int:
    """Return a fresh random span ID as a number: 64 bits, never zero."""
    while True:
        bits = random_bits(64)
        if bits:
            return bits


def new_span_id() -> str:
    """Return a fresh random span ID: 16 lowercase hex digits, never all zeros."""
    return f"{new_span_bits():016x}"


def _new_trace_id() -> str:
    while True:
        # from the OS's entropy: once per trace, and unique whatever forked the process
        trace_id = secrets.token_hex(16)
        if trace_id != _ZERO_TRACE_ID:
            return trace_id


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace ID and the span to continue from.

    IDs are checked on construction (``ValueError`` otherwise), so
    :meth:`traceparent` always renders a valid header::

        >>> TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7").traceparent()
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    """

    trace_id: str
    span_id: str
    sampled: bool = True

    def __post_init__(self) -> None:
        _check_trace_id(self.trace_id)
        _check_span_id(self.span_id)

    def traceparent(self) -> str:
        """Render as a version-00 ``traceparent`` header value."""
        return _traceparent(self.trace_id, self.span_id, sampled=self.sampled)

    def child(self) -> TraceContext:
        """Return a context in the same trace with a fresh span ID."""
        return TraceContext(self.trace_id, new_span_id(), self.sampled)


def new_trace() -> TraceContext:
    """Start a new sampled trace: fresh random trace ID and span ID."""
    return TraceContext(_new_trace_id(), new_span_id())


def parse_traceparent(value: object) -> TraceContext | None:
    """Parse a W3C ``traceparent`` value strictly; ``None`` for anything invalid.

    Never raises. Accepted: printable ASCII of at most 512 characters, a two-digit
    lowercase hex version other than ``ff``, lowercase hex IDs that are not all zeros.
    Version ``00`` is exactly 55 characters; a later version may carry more fields after
    the first 55 characters, separated by ``-``, which are ignored. Only the ``sampled``
    bit of the flags is kept.
    """
    if not isinstance(value, str) or len(value) > _MAX_TRACEPARENT:
        return None
    match = _HEADER_RE.fullmatch(value[:_V00_LENGTH])
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff":
        return None
    if len(value) > _V00_LENGTH:  # the first 55 characters matched hex digits and dashes
        if version == "00" or value[_V00_LENGTH] != "-":
            return None
        if not value.isascii() or not value.isprintable():
            return None
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    # checked above as the constructor would check them: built without a second look
    ctx = object.__new__(TraceContext)
    object.__setattr__(ctx, "trace_id", trace_id)
    object.__setattr__(ctx, "span_id", span_id)
    object.__setattr__(ctx, "sampled", bool(int(flags, 16) & 1))
    return ctx


def _escape_char(char: str, *, keep_space: bool) -> str:
    if " " < char <= "~" or (keep_space and char == " "):
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - any object must come out as some text
        return f"<unprintable {type(value).__name__}>"


#: Text that escaping leaves as it is: printable ASCII, without or with the space.
_VERBATIM = re.compile(r"[!-~]*")
_VERBATIM_SPACED = re.compile(r"[ -~]*")


def _escape(value: object, limit: int, *, keep_space: bool) -> str:
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}, got {limit}")
    text = _to_str(value)
    verbatim = _VERBATIM_SPACED if keep_space else _VERBATIM
    if type(text) is str and len(text) <= limit and verbatim.fullmatch(text):
        return text  # the common case (IDs, names): nothing to escape, nothing to cut
    pieces = [_escape_char(char, keep_space=keep_space) for char in text]
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    raw = text.encode("utf-8", "surrogatepass")
    marker = "~" + hashlib.sha256(raw).hexdigest()[: _DIGEST_CHARS - 1]
    room = limit - len(marker)
    kept: list[str] = []
    for piece in pieces:
        if len(piece) > room:
            break
        kept.append(piece)
        room -= len(piece)
    return "".join(kept) + marker


def safe_token(value: object, limit: int = 128) -> str:
    r"""Make an outside value safe to put in a log line as one token.

    Everything but printable ASCII other than space (control characters, space,
    non-ASCII) becomes an escape (a newline → ``\x0a``, ``é`` → ``\xe9``). A result
    longer than ``limit`` is cut and ends with ``~`` and a short digest of the whole
    value, so two long values that share a prefix stay distinct. Non-strings go through
    ``str()``. Idempotent: ``safe_token(safe_token(v)) == safe_token(v)``.

        >>> safe_token("tasks.charge\r\nattempt=9")
        'tasks.charge\\x0d\\x0aattempt=9'
    """
    return _escape(value, limit, keep_space=False)


def safe_text(value: object, limit: int = 512) -> str:
    """Like :func:`safe_token`, but spaces are kept: for causes and messages."""
    return _escape(value, limit, keep_space=True)


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """What identifies one attempt of a task; bound with :func:`bind_attempt`.

    ``attempt`` counts from 1. ``task_id`` and ``task_name`` are passed through
    :func:`safe_token` here, so whatever a publisher chose is log-safe once bound;
    ``trace_id`` and ``span_id`` must be valid IDs (``ValueError`` otherwise).
    ``sampled`` is the trace flag sent on outbound calls.
    """

    trace_id: str
    span_id: str
    task_id: str
    task_name: str
    attempt: int
    sampled: bool = True

    def __post_init__(self) -> None:
        _check_trace_id(self.trace_id)
        _check_span_id(self.span_id)
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int):
            raise TypeError(f"attempt must be an int, not {type(self.attempt).__name__}")
        if self.attempt < 1:
            raise ValueError(f"attempt counts from 1, got {self.attempt}")
        object.__setattr__(self, "task_id", safe_token(self.task_id))
        object.__setattr__(self, "task_name", safe_token(self.task_name))

    @classmethod
    def of_checked(
        cls,
        trace_id: str,
        span_id: str,
        task_id: str,
        task_name: str,
        attempt: int,
        *,
        sampled: bool,
    ) -> AttemptInfo:
        """Build from values already checked, without checking them again: the IDs (from a
        :class:`TraceContext` and an attempt's span), ``task_id`` and ``task_name``
        (already through :func:`safe_token`) and ``attempt`` (from 1)."""
        info = object.__new__(cls)
        for name, value in (
            ("trace_id", trace_id),
            ("span_id", span_id),
            ("task_id", task_id),
            ("task_name", task_name),
            ("attempt", attempt),
            ("sampled", sampled),
        ):
            object.__setattr__(info, name, value)
        return info

    def traceparent(self) -> str:
        """The ``traceparent`` value for calls made by this attempt."""
        return _traceparent(self.trace_id, self.span_id, sampled=self.sampled)

    def trace_context(self) -> TraceContext:
        """This attempt's position in its trace, for whoever continues it."""
        return TraceContext(self.trace_id, self.span_id, self.sampled)


_attempt: contextvars.ContextVar[AttemptInfo | None] = contextvars.ContextVar(
    "celery_resilience_attempt", default=None
)
# A mutable counter rather than an int, so that a context copied inside the attempt
# (contextvars.copy_context) keeps counting in the same sequence.
_unsafe_calls: contextvars.ContextVar[itertools.count[int] | None] = contextvars.ContextVar(
    "celery_resilience_unsafe_calls", default=None
)


#: An attempt kept current past its block (:func:`hold_attempt`), and what says whether
#: it still is.
_held: contextvars.ContextVar[tuple[AttemptInfo, Callable[[], bool]] | None] = (
    contextvars.ContextVar("celery_resilience_held", default=None)
)


def current_attempt() -> AttemptInfo | None:
    """The attempt bound in the current context; else one held past its block while it
    still holds (:func:`hold_attempt`); else ``None``."""
    info = _attempt.get()
    if info is None:
        held = _held.get()
        if held is not None:
            if held[1]():
                return held[0]
            _held.set(None)  # lapsed for good: later reads need not ask again
    return info


def bind_attempt(info: AttemptInfo) -> AbstractContextManager[AttemptInfo]:
    """Bind ``info`` as the current attempt for the block, with a fresh call counter.

    On exit (also by exception) the previous attempt, if any, is bound again together
    with its own counter::

        with bind_attempt(info):
            assert current_attempt() is info
    """
    if not isinstance(info, AttemptInfo):
        raise TypeError(f"bind_attempt() takes an AttemptInfo, not {type(info).__name__}")
    return _Binding(info)


class _Binding:
    """What :func:`bind_attempt` returns (a class, not a generator: entered per attempt)."""

    __slots__ = ("_attempt_token", "_calls_token", "_entered", "_info")

    def __init__(self, info: AttemptInfo) -> None:
        self._info = info
        self._entered = False

    def __enter__(self) -> AttemptInfo:
        if self._entered:  # as a generator's: one block per call
            raise RuntimeError("bind_attempt() is entered once; call it again for another")
        self._entered = True
        self._attempt_token = _attempt.set(self._info)
        self._calls_token = _unsafe_calls.set(itertools.count(1))
        return self._info

    def __exit__(self, *_: object) -> None:
        _unsafe_calls.reset(self._calls_token)
        _attempt.reset(self._attempt_token)


def hold_attempt(info: AttemptInfo, still: Callable[[], bool]) -> None:
    """Keep ``info`` current past the end of its block for as long as ``still()`` is
    true (asked at each read while no attempt is bound; once false, the hold is gone),
    until the next hold.

    The worker logs an attempt's outcome (``retry:``, ``succeeded in``, ``raised``) and
    publishes its links after the task's own call returns; holding the attempt while
    Celery's request for it is current gives those lines and messages the attempt's trace
    too, with nothing to undo once it is gone. No call counter is held: the body is over.
    """
    _held.set((info, still))


def next_unsafe_call_index() -> int:
    """Take the position of the next non-idempotent call (POST, PATCH) of this attempt.

    Returns 1 for the first call of the attempt, 2 for the second, and so on; every
    attempt starts again from 1, so the n-th call of a retry gets the same position as
    the n-th call of the first attempt. Outside an attempt it returns 0 and counts
    nothing: there is no retry to stay stable across.
    """
    counter = _unsafe_calls.get()
    return 0 if counter is None else next(counter)
