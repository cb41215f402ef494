"""Every log record of an attempt carries the attempt's context, and no secrets.

:class:`AttemptContextFilter` puts ``trace_id``, ``span_id``, ``task_id``, ``task_name``
and ``attempt`` on each record (``-`` outside an attempt). :func:`wrap_formatter` makes
any formatter append the context when its format string does not show it, and
:func:`redact` (from :mod:`celery_resilience.observability.redaction`, re-exported
here) hide credentials. :func:`install` does both for a worker's handlers; the
Celery layer calls it from Celery's ``after_setup_logger`` and
``after_setup_task_logger`` signals.

In your own logging configuration, show the fields with a format string such as::

    %(asctime)s %(levelname)s %(name)s trace=%(trace_id)s span=%(span_id)s
    task=%(task_name)s[%(task_id)s] attempt=%(attempt)s %(message)s

(one line), for instance with :mod:`logging.config.dictConfig`::

    "filters": {"attempt": {"()": "celery_resilience.observability.logs.AttemptContextFilter"}},
    "formatters": {"plain": {"()": "celery_resilience.observability.logs.RedactingFormatter",
                             "fmt": "%(asctime)s ... %(message)s"}},

A :class:`RedactingFormatter` stamps the fields itself, so its format string works
even on a handler without the filter.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

from celery_resilience.observability.redaction import is_secret_name, redact
from celery_resilience.observability.tracing import current_attempt, safe_text

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMAT",
    "AttemptContextFilter",
    "RedactingFormatter",
    "format_outcome",
    "install",
    "install_on_logger",
    "is_secret_name",
    "redact",
    "stamp_record",
    "wrap_formatter",
]

CONTEXT_FIELDS = ("trace_id", "span_id", "task_id", "task_name", "attempt")
"""The record attributes set by :class:`AttemptContextFilter`."""

LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s span=%(span_id)s "
    "task=%(task_name)s[%(task_id)s] attempt=%(attempt)s %(message)s"
)
"""A format string showing the whole attempt context."""

_PLACEHOLDERS = frozenset({"", "-", "???"})
_MISSING = "-"
_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")

# --- the context on records -------------------------------------------------------


def _is_placeholder(value: object) -> bool:
    return value is None or (isinstance(value, str) and value in _PLACEHOLDERS)


def stamp_record(record: logging.LogRecord) -> logging.LogRecord:
    """Set the attempt context on ``record`` where it has none yet; return the record.

    A field that already holds a real value is kept (Celery's ``TaskFormatter`` sets
    ``task_id``/``task_name``; a record formatted in another thread keeps what it was
    stamped with where it was made). Placeholders (absent, ``""``, ``"-"``, ``"???"``)
    are filled from the current attempt
    (:func:`~celery_resilience.observability.tracing.current_attempt`), or with ``"-"`` outside
    an attempt.
    """
    info = current_attempt()
    values: Mapping[str, object]
    if info is None:
        values = dict.fromkeys(CONTEXT_FIELDS, _MISSING)
    else:
        values = {
            "trace_id": info.trace_id,
            "span_id": info.span_id,
            "task_id": info.task_id,
            "task_name": info.task_name,
            "attempt": info.attempt,
        }
    fields = record.__dict__
    for name, value in values.items():
        if _is_placeholder(fields.get(name)):
            fields[name] = value
    return record


class AttemptContextFilter(logging.Filter):
    """Put the attempt context on every record passing a handler; never drops one.

    Add it to handlers (not loggers: a logger's filters skip records propagated from
    its children). See :func:`stamp_record` for which values win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp ``record`` and let it through."""
        stamp_record(record)
        return True


# --- formatters -------------------------------------------------------------------


def _shows_context(formatter: logging.Formatter) -> bool:
    """Whether ``formatter``'s output already carries the context fields."""
    if getattr(formatter, "stamps_attempt_context", False):
        return True
    return _mentions_context(formatter) or _is_json(formatter)


def _mentions_context(formatter: logging.Formatter) -> bool:
    fmt = getattr(formatter, "_fmt", None)
    return isinstance(fmt, str) and "trace_id" in fmt


def _is_json(formatter: logging.Formatter) -> bool:
    # JSON formatters emit every extra record attribute, the context fields included,
    # and text appended to their output would break it.
    for module, name in (
        ("pythonjsonlogger.core", "BaseJsonFormatter"),
        ("pythonjsonlogger.jsonlogger", "JsonFormatter"),
    ):
        json_class = getattr(sys.modules.get(module), name, None)
        if isinstance(json_class, type) and isinstance(formatter, json_class):
            return True
    return False


def _suffix(record: logging.LogRecord) -> str | None:
    trace_id = getattr(record, "trace_id", None)
    if not isinstance(trace_id, str) or not _TRACE_ID_RE.fullmatch(trace_id):
        return None
    span_id = getattr(record, "span_id", _MISSING)
    attempt = getattr(record, "attempt", _MISSING)
    return f" [trace_id={trace_id} span_id={span_id} attempt={attempt}]"


class RedactingFormatter(logging.Formatter):
    """A formatter whose output carries the attempt context and no secrets.

    It formats with ``wrapped`` when given (see ``wrap_formatter``), else as a
    plain ``logging.Formatter`` with ``fmt``. Then, inside an attempt, it appends
    `` [trace_id=<32 hex> span_id=<16 hex> attempt=<n>]`` to the first line (a
    traceback stays below it) unless the output already shows the context (``suffix``:
    ``None`` decides from the format string, ``True``/``False`` force it). Last, the
    whole text goes through ``redact``.
    """

    stamps_attempt_context: ClassVar[bool] = True

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        validate: bool = True,
        *,
        defaults: Mapping[str, Any] | None = None,
        wrapped: logging.Formatter | None = None,
        suffix: bool | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate, defaults=defaults)
        self.wrapped = wrapped
        shown = _shows_context(wrapped) if wrapped is not None else _mentions_context(self)
        self.suffix = (not shown) if suffix is None else suffix

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record``, add the context where missing, redact secrets."""
        stamp_record(record)
        text = self.wrapped.format(record) if self.wrapped is not None else super().format(record)
        suffix = _suffix(record) if self.suffix else None
        if suffix is not None:
            first, newline, rest = text.partition("\n")
            text = first + suffix + newline + rest
        return redact(text)


def wrap_formatter(
    formatter: logging.Formatter | None, *, suffix: bool | None = None
) -> logging.Formatter:
    """Return a formatter that formats like ``formatter`` plus context and redaction.

    ``None`` stands for the default formatter (``%(message)s``). A formatter that
    already stamps the context (a :class:`RedactingFormatter`, the JSON formatter of
    :mod:`celery_resilience.observability.jsonlog`) is returned as it is, so wrapping twice is
    wrapping once::

        handler.setFormatter(wrap_formatter(handler.formatter))
    """
    if formatter is not None and getattr(formatter, "stamps_attempt_context", False):
        return formatter
    return RedactingFormatter(wrapped=formatter or logging.Formatter(), suffix=suffix)


def install(handlers: Iterable[logging.Handler]) -> None:
    """Add the context filter (once) to each handler and wrap its formatter (once)."""
    for handler in handlers:
        if not any(isinstance(f, AttemptContextFilter) for f in handler.filters):
            handler.addFilter(AttemptContextFilter())
        handler.setFormatter(wrap_formatter(handler.formatter))


def install_on_logger(logger: logging.Logger | str | None = None) -> None:
    """:func:`install` on the handlers of ``logger`` (a logger, its name, or root).

    Celery calls its setup signals with the root logger (``after_setup_logger``) and
    the ``celery.task`` logger (``after_setup_task_logger``); both pass ``logger``.
    """
    if not isinstance(logger, logging.Logger):
        logger = logging.getLogger(logger)
    install(logger.handlers)


# --- the outcome line -------------------------------------------------------------


def _seconds(value: float) -> str:
    text = f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def _label(value: object) -> str:
    return safe_text(getattr(value, "value", value), limit=200)


def format_outcome(
    *,
    outcome: str,
    verdict: str | None,
    cause: str | None,
    duration: float,
    countdown: float | None,
    final_state: str | None,
    attempt: int | None = None,
) -> str:
    """Build the one line logged per attempt outcome.

    ``attempt`` defaults to the current attempt's number. Outside values are escaped
    and redacted::

        >>> format_outcome(outcome="failed", verdict="transient",
        ...                cause="HTTP 503 from api.example.com", duration=0.2134,
        ...                countdown=3.4, final_state=None, attempt=2)
        'attempt 2 failed: transient (HTTP 503 from api.example.com) after 0.21 s; retry in 3.4 s'
        >>> format_outcome(outcome="succeeded", verdict=None, cause=None, duration=1.5,
        ...                countdown=None, final_state="SUCCESS", attempt=1)
        'attempt 1 succeeded after 1.5 s; final state SUCCESS'
    """
    if attempt is None:
        info = current_attempt()
        attempt = info.attempt if info is not None else None
    parts = ["attempt" if attempt is None else f"attempt {attempt}", f" {_label(outcome)}"]
    if verdict is not None:
        parts.append(f": {_label(verdict)}")
    if cause:
        parts.append(f" ({_label(cause)})")
    parts.append(f" after {_seconds(duration)} s")
    if countdown is not None:
        parts.append(f"; retry in {_seconds(countdown)} s")
    if final_state is not None:
        parts.append(f"; final state {_label(final_state)}")
    return redact("".join(parts))
