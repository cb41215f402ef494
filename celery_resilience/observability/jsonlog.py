"""A JSON log formatter carrying the attempt context, with secrets redacted.

Needs the ``json-logs`` extra (``pip install celery-resilience[json-logs]``, which
brings python-json-logger); importing this module does not, building a formatter does::

    handler.setFormatter(JsonFormatter())
    # {"asctime": "...", "levelname": "INFO", "name": "shop", "message": "charged",
    #  "trace_id": "4bf9...", "span_id": "00f0...", "task_id": "...",
    #  "task_name": "shop.charge", "attempt": 2}

or in :mod:`logging.config.dictConfig`:
``"formatters": {"json": {"()": "celery_resilience.observability.jsonlog.JsonFormatter"}}``.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from celery_resilience.observability.logs import stamp_record
from celery_resilience.observability.redaction import redact_value

__all__ = ["DEFAULT_JSON_FORMAT", "JsonFormatter"]

DEFAULT_JSON_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s %(message)s "
    "%(trace_id)s %(span_id)s %(task_id)s %(task_name)s %(attempt)s"
)
"""The fields a :class:`JsonFormatter` writes by default (extra record fields follow)."""

_INSTALL_HINT = (
    "celery_resilience.observability.jsonlog.JsonFormatter needs python-json-logger: "
    "pip install celery-resilience[json-logs]"
)


def _json_base() -> Callable[..., logging.Formatter]:
    # python-json-logger >= 3.1 has pythonjsonlogger.json; 3.0 only the older name.
    for module_name in ("pythonjsonlogger.json", "pythonjsonlogger.jsonlogger"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return _redacting(module.JsonFormatter)
    raise ImportError(_INSTALL_HINT, name="pythonjsonlogger")


@functools.cache
def _redacting(base: type[Any]) -> Callable[..., logging.Formatter]:
    class RedactingJsonFormatter(base):  # type: ignore[misc]
        def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
            log_data = super().process_log_record(log_data)
            return dict(redact_value(log_data))

    return RedactingJsonFormatter


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the attempt context included, secrets redacted.

    Takes python-json-logger's options (``rename_fields``, ``static_fields``,
    ``json_indent``, ``timestamp``, ...). Every string value goes through
    ``celery_resilience.observability.redaction.redact``, and values under secret-looking keys
    (``password``, ``authorization``, ``api_key``, ...) become ``"***"``. The context
    fields are stamped on each record (``"-"`` outside an attempt), so no filter is
    needed. Raises ``ImportError`` naming the extra to install when python-json-logger
    is missing.
    """

    stamps_attempt_context: ClassVar[bool] = True

    def __init__(
        self,
        fmt: str | Sequence[str] | None = DEFAULT_JSON_FORMAT,
        datefmt: str | None = None,
        style: Literal["%", "{", "$", ","] = "%",
        validate: bool = True,
        **options: object,
    ) -> None:
        base = _json_base()
        super().__init__(None, datefmt)
        self.json: logging.Formatter = base(fmt, datefmt, style, validate, **options)

    def format(self, record: logging.LogRecord) -> str:
        """Stamp the attempt context on ``record`` and render it as JSON."""
        return self.json.format(stamp_record(record))
