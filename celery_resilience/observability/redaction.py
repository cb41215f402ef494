"""One redaction for every sink: text, URLs, headers, values and exceptions.

Every place that hands text or an exception to a sink (logs, the result backend and
Flower, dead letters, the CLI, OpenTelemetry spans) goes through this module:

- :func:`redact` hides credentials in text (a log line, a traceback, a ``repr``);
- :func:`redact_headers` and :func:`redact_value` hide them in headers and in values
  (mappings, lists, exceptions nested anywhere);
- :func:`redact_exception` rewrites an exception *in place* before it travels on: its
  arguments of any type, its string attributes, its notes, the exceptions nested in its
  arguments (``requests``' ``SSLError`` wraps a ``urllib3`` error whose text holds the
  URL) and its whole ``__cause__``/``__context__`` chain, so that the ``repr`` Celery
  stores and the traceback text it formats carry no secret. An exception whose text still
  shows a secret afterwards (a ``__str__`` reading state this module cannot rewrite) is
  replaced by a :class:`RedactedError` carrying its redacted text.

Redaction is idempotent and keeps names: ``api_key=***``, ``Authorization: ***``.
"""

from __future__ import annotations

import builtins
import contextlib
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "RedactedError",
    "format_exception",
    "is_secret_name",
    "leaks",
    "redact",
    "redact_exception",
    "redact_headers",
    "redact_value",
]

REDACTED = "***"
"""What replaces each hidden value."""

#: Fields that built-in exceptions keep outside ``args`` and ``__dict__`` and show in
#: their text (OSError, UnicodeError, SyntaxError).
_FIELDS = ("strerror", "filename", "filename2", "reason", "object", "msg", "text")
#: How deep values and exception chains are followed (a cycle is followed once).
_MAX_DEPTH = 12
#: A ``repr`` longer than this is not computed for an unknown object in a value; the
#: object is kept when its type is harmless, else stands as its redacted ``repr``.
_REPR_LIMIT = 20_000

_HEADER_NAMES = (
    r"(?:proxy-)?authorization|(?:set-)?cookie"
    r"|x-[a-z0-9-]*?(?:key|token|secret|signature|password|auth)"
    r"|[a-z0-9-]*api[-_]?key|private-token"
)
_PARAM_NAMES = (
    r"api[-_]?key|(?:access|refresh|id|auth|private|session)[-_]token|client[-_]secret"
    r"|token|secret|passw(?:or)?d|signature|sig|key|auth"
    r"|x-[a-z]+-(?:signature|credential|security-token)"
)
# In a dict or tuple, "key" and "sig" are too common to mean a secret.
_MAPPING_NAMES = (
    _HEADER_NAMES + r"|api[-_]?key|(?:access|refresh|id|auth|private|session)[-_]token"
    r"|client[-_]secret|token|secret|passw(?:or)?d|signature|auth"
)
_QUOTED = r"'(?:[^'\\\r\n]|\\.)*'|\"(?:[^\"\\\r\n]|\\.)*\""

# Authorization: Bearer abc   (the value runs to the end of the line or a quote)
_HEADER_RE = re.compile(
    rf"(?<![\w-])(?P<name>{_HEADER_NAMES})(?![\w-])(?P<sep>[ \t]*:[ \t]*)"
    rf"(?P<value>{_QUOTED}|[^\s\"'\\][^\r\n\"'\\]*)",
    re.IGNORECASE,
)
# {'Authorization': 'Bearer abc'}, {"token": "abc"}, ('Cookie', b'a=1')
_MAPPING_RE = re.compile(
    rf"(?P<head>(?P<q>['\"])(?:{_MAPPING_NAMES})(?P=q)\s*[:,]\s*b?)"
    rf"(?P<value>{_QUOTED})",
    re.IGNORECASE,
)
# The same inside a repr of a repr: {\'Authorization\': \'Bearer abc\'}
_ESCAPED_MAPPING_RE = re.compile(
    rf"(?P<head>(?P<q>\\+['\"])(?:{_MAPPING_NAMES})(?P=q)\s*[:,]\s*b?)"
    r"(?P<value>(?P=q)(?:(?!(?P=q))[^\r\n])*(?P=q))",
    re.IGNORECASE,
)
# https://host/path?api_key=abc&page=2, and OAuth's https://host/cb#access_token=abc
_QUERY_RE = re.compile(
    rf"(?P<head>[?&;#](?:{_PARAM_NAMES})=)(?P<value>[^&#;,\s\"'\\<>()\[\]{{}}]+)",
    re.IGNORECASE,
)
# redis://:password@host, amqp://user:password@host
_USERINFO_RE = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s/?#@:\"'\\]*:)(?P<value>[^\s/?#@\"'\\]+)@",
    re.IGNORECASE,
)
_SECRET_NAME_RE = re.compile(_MAPPING_NAMES, re.IGNORECASE)
#: BaseExceptionGroup (Python 3.11+; the exceptiongroup backport's on 3.10, when loaded).
_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None) or getattr(
    sys.modules.get("exceptiongroup"), "BaseExceptionGroup", None
)


class RedactedError(Exception):
    """Stands for an exception whose text kept a secret after redaction.

    Its message is ``"<module>.<type>: <redacted text>"``; it keeps the original's
    traceback and redacted cause, so the stored traceback still says where it happened.
    """


def is_secret_name(name: str) -> bool:
    """Whether a header, parameter or field called ``name`` holds a credential.

    >>> is_secret_name("X-Api-Key"), is_secret_name("Accept")
    (True, False)
    """
    return _SECRET_NAME_RE.fullmatch(name) is not None


def redact(text: str) -> str:
    r"""Hide credentials in ``text``, keeping their names; ``***`` replaces each value.

    Hidden: the values of ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
    ``Set-Cookie`` and API-key or token headers (``X-Api-Key``, ``X-Auth-Token``, ...)
    written as ``Name: value`` or in a dict, tuple or JSON form; secret-looking query
    parameters (``api_key``, ``token``, ``password``, ``signature``, ...), up to the
    next delimiter or bracket; and the password in ``scheme://user:password@host``
    (percent-encoded, as URLs require). Case-insensitive, idempotent.

        >>> redact("GET https://api.example/v1?api_key=s3cr3t&page=2")
        'GET https://api.example/v1?api_key=***&page=2'
        >>> redact("{'Authorization': 'Bearer abc', 'Accept': '*/*'}")
        "{'Authorization': '***', 'Accept': '*/*'}"
    """
    text = _HEADER_RE.sub(rf"\g<name>\g<sep>{REDACTED}", text)
    text = _MAPPING_RE.sub(_redact_quoted, text)
    text = _ESCAPED_MAPPING_RE.sub(_redact_escaped, text)
    text = _QUERY_RE.sub(rf"\g<head>{REDACTED}", text)
    return _USERINFO_RE.sub(rf"\g<head>{REDACTED}@", text)


def _redact_quoted(match: re.Match[str]) -> str:
    quote = match["value"][0]
    return f"{match['head']}{quote}{REDACTED}{quote}"


def _redact_escaped(match: re.Match[str]) -> str:
    return f"{match['head']}{match['q']}{REDACTED}{match['q']}"


def leaks(text: str) -> bool:
    """Whether :func:`redact` would change ``text`` (it shows a credential)."""
    return redact(text) != text


def redact_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``headers`` with the value of each credential header replaced by ``***``
    and the others redacted as text (a ``Location`` may carry a token in its query).

    >>> redact_headers({"Authorization": "Bearer abc", "Accept": "*/*"})
    {'Authorization': '***', 'Accept': '*/*'}
    """
    return {name: _item(name, value, set(), 0) for name, value in headers.items()}


def redact_value(value: Any) -> Any:
    """``value`` with its credentials hidden: strings redacted as text, values under a
    secret-looking key (in a mapping) replaced by ``***``, lists, tuples and sets
    followed, exceptions rewritten by :func:`redact_exception`, and any other object
    whose ``repr`` shows a credential replaced by its redacted ``repr``. Values without
    a credential come back as the very same objects.
    """
    return _value(value, set(), 0)


def redact_exception(exc: BaseException) -> BaseException:
    """Rewrite ``exc`` in place so that nothing it carries shows a credential.

    Followed: its ``args`` (of any type: strings, bytes, mappings, sequences, nested
    exceptions), the strings and exceptions among its attributes, its ``__notes__``,
    ``__cause__`` and ``__context__`` (to any depth, each exception once). Returns
    ``exc`` itself, or a :class:`RedactedError` standing for it when its text still
    shows a credential (the caller raises what this returns).
    """
    return _exception(exc, set(), 0)


def format_exception(exc: BaseException) -> str:
    """The traceback text of ``exc`` with its chain, redacted (for a span or a log)."""
    return redact("".join(traceback.format_exception(exc)))


# --- values -----------------------------------------------------------------------


def _item(key: object, value: Any, seen: set[int], depth: int) -> Any:
    if isinstance(key, str) and value is not None and is_secret_name(key):
        return REDACTED
    return _value(value, seen, depth)


def _value(value: Any, seen: set[int], depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bytes, bytearray)):
        return _bytes(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, BaseException):
        return _exception(value, seen, depth + 1)
    if isinstance(value, Mapping):
        items = {k: _item(k, v, seen, depth + 1) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value
        return items
    if isinstance(value, (list, tuple, set, frozenset)):
        new = [_value(v, seen, depth + 1) for v in value]
        if all(n is o for n, o in zip(new, value, strict=True)):
            return value
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(new)
        return new if isinstance(value, list) else type(value)(new)
    return _other(value)


def _bytes(value: bytes | bytearray) -> bytes | bytearray:
    text = bytes(value).decode("utf-8", "surrogateescape")
    cleaned = redact(text)
    if cleaned == text:
        return value
    return cleaned.encode("utf-8", "surrogateescape")


def _other(value: object) -> object:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ leaks nothing
        return value
    if len(text) > _REPR_LIMIT:
        text = text[:_REPR_LIMIT]
    return redact(text) if leaks(text) else value


# --- exceptions -------------------------------------------------------------------


def _exception(exc: BaseException, seen: set[int], depth: int) -> BaseException:
    if id(exc) in seen or depth >= _MAX_DEPTH:
        return exc
    seen.add(id(exc))
    _rewrite_args(exc, seen, depth)
    _rewrite_attributes(exc, seen, depth)
    _rewrite_fields(exc)
    if _GROUP is not None and isinstance(exc, _GROUP):
        exc = _regroup(exc, seen, depth)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [redact(n) if isinstance(n, str) else n for n in notes]
    if exc.__cause__ is not None:
        exc.__cause__ = _exception(exc.__cause__, seen, depth + 1)
    if exc.__context__ is not None:
        exc.__context__ = _exception(exc.__context__, seen, depth + 1)
    if _shows_secret(exc):
        return _stand_in(exc)
    return exc


def _rewrite_args(exc: BaseException, seen: set[int], depth: int) -> None:
    new = tuple(_value(a, seen, depth + 1) for a in exc.args)
    if any(n is not o for n, o in zip(new, exc.args, strict=True)):
        with contextlib.suppress(AttributeError, TypeError):  # a type guarding its args
            exc.args = new


def _rewrite_attributes(exc: BaseException, seen: set[int], depth: int) -> None:
    attributes = getattr(exc, "__dict__", None)
    if not isinstance(attributes, dict):
        return
    for name, value in list(attributes.items()):
        if not isinstance(value, (str, bytes, BaseException, Mapping, list, tuple)):
            continue  # a request or response object: not sent anywhere by Celery
        new = _item(name, value, seen, depth + 1)
        if new is not value:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, name, new)


def _rewrite_fields(exc: BaseException) -> None:
    for name in _FIELDS:
        value = getattr(exc, name, None)
        if isinstance(value, (str, bytes)):
            new = _value(value, set(), 0)
            if new is not value:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, name, new)


def _regroup(group: Any, seen: set[int], depth: int) -> BaseException:
    """A group keeps its members apart from its args: rebuild it when one was replaced."""
    members = [_exception(m, seen, depth + 1) for m in group.exceptions]
    if all(n is o for n, o in zip(members, group.exceptions, strict=True)):
        return group  # type: ignore[no-any-return]
    new: BaseException = group.derive(members)
    new.__cause__ = group.__cause__
    new.__context__ = group.__context__
    new.__suppress_context__ = group.__suppress_context__
    new.__traceback__ = group.__traceback__
    notes = _notes(group)
    if notes:
        new.__notes__ = notes  # type: ignore[attr-defined]
    return new


def _text_of(exc: BaseException) -> tuple[str, str]:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an unprintable exception shows nothing
        text = "<unprintable>"
    try:
        shown = repr(exc)
    except Exception:  # noqa: BLE001
        shown = "<unrepresentable>"
    return text, shown


def _shows_secret(exc: BaseException) -> bool:
    text, shown = _text_of(exc)
    return leaks(text) or leaks(shown) or any(leaks(n) for n in _notes(exc))


def _notes(exc: BaseException) -> list[str]:
    notes = getattr(exc, "__notes__", None)
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


def _stand_in(exc: BaseException) -> BaseException:
    kind = type(exc)
    text, _ = _text_of(exc)
    stand_in = RedactedError(f"{kind.__module__}.{kind.__qualname__}: {redact(text)}")
    stand_in.__cause__ = exc.__cause__
    stand_in.__context__ = exc.__context__
    stand_in.__suppress_context__ = exc.__suppress_context__
    stand_in.__traceback__ = exc.__traceback__
    # The original stays reachable from nowhere that is formatted or serialised.
    return stand_in
