"""Log records of an attempt carry its context, and no secret reaches the output."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter as PlainJson

from celery_resilience.observability.jsonlog import JsonFormatter
from celery_resilience.observability.logs import (
    LOG_FORMAT,
    AttemptContextFilter,
    RedactingFormatter,
    format_outcome,
    install,
    install_on_logger,
    is_secret_name,
    redact,
    wrap_formatter,
)
from celery_resilience.observability.tracing import AttemptInfo, bind_attempt

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
SUFFIX = f" [trace_id={TRACE_ID} span_id={SPAN_ID} attempt=2]"
INFO = AttemptInfo(
    trace_id=TRACE_ID, span_id=SPAN_ID, task_id="tid-1", task_name="shop.charge", attempt=2
)


def make_record(msg: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


@pytest.fixture
def stream_logger() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    logger = logging.getLogger(f"celery_resilience.tests.{id(object())}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def output(handler: logging.StreamHandler[io.StringIO]) -> str:
    return handler.stream.getvalue()


# --- AttemptContextFilter -------------------------------------------------------


def test_filter_stamps_the_attempt():
    """Inside an attempt every context field is set from it."""
    record = make_record()
    with bind_attempt(INFO):
        AttemptContextFilter().filter(record)
    assert (record.trace_id, record.span_id, record.task_id, record.task_name, record.attempt) == (
        TRACE_ID,
        SPAN_ID,
        "tid-1",
        "shop.charge",
        2,
    )


def test_filter_uses_dash_outside_an_attempt():
    """Outside an attempt every field is "-", so format strings never fail."""
    record = make_record()
    AttemptContextFilter().filter(record)
    assert [getattr(record, f) for f in ("trace_id", "span_id", "task_id", "attempt")] == ["-"] * 4


def test_filter_always_lets_records_through():
    """The filter only adds fields: it returns True inside and outside attempts."""
    assert AttemptContextFilter().filter(make_record())
    with bind_attempt(INFO):
        assert AttemptContextFilter().filter(make_record())


def test_filter_keeps_celery_task_fields():
    """A real task_id/task_name already on the record (Celery's) is not overwritten."""
    record = make_record(task_id="celery-id", task_name="celery.name")
    with bind_attempt(INFO):
        AttemptContextFilter().filter(record)
    assert (record.task_id, record.task_name, record.trace_id) == (
        "celery-id",
        "celery.name",
        TRACE_ID,
    )


def test_filter_fills_celery_placeholders():
    """Celery's "???" placeholders are replaced by the attempt's values."""
    record = make_record(task_id="???", task_name="???")
    with bind_attempt(INFO):
        AttemptContextFilter().filter(record)
    assert (record.task_id, record.task_name) == ("tid-1", "shop.charge")


def test_filter_keeps_context_stamped_elsewhere():
    """A record stamped in its attempt keeps those values when handled in another context."""
    record = make_record()
    with bind_attempt(INFO):
        AttemptContextFilter().filter(record)
    AttemptContextFilter().filter(record)
    assert record.trace_id == TRACE_ID


# --- formatters -----------------------------------------------------------------


def test_wrapped_formatter_appends_context_in_an_attempt():
    """Inside an attempt a plain format gets " [trace_id=... span_id=... attempt=n]"."""
    formatter = wrap_formatter(logging.Formatter("%(levelname)s %(message)s"))
    with bind_attempt(INFO):
        assert formatter.format(make_record()) == "INFO hello" + SUFFIX


def test_wrapped_formatter_adds_nothing_outside_an_attempt():
    """Outside an attempt the wrapped output is the plain output."""
    formatter = wrap_formatter(logging.Formatter("%(levelname)s %(message)s"))
    assert formatter.format(make_record()) == "INFO hello"


def test_wrap_none_uses_the_default_format():
    """wrap_formatter(None) formats like logging's default (the bare message)."""
    with bind_attempt(INFO):
        assert wrap_formatter(None).format(make_record()) == "hello" + SUFFIX


@pytest.mark.parametrize(
    ("fmt", "style"),
    [("%(message)s trace=%(trace_id)s", "%"), ("{message} trace={trace_id}", "{")],
)
def test_no_suffix_when_the_format_shows_the_trace(fmt, style):
    """A format string that references trace_id already shows it: nothing is appended."""
    formatter = wrap_formatter(logging.Formatter(fmt, style=style))
    with bind_attempt(INFO):
        record = make_record()
        AttemptContextFilter().filter(record)
        assert formatter.format(record) == f"hello trace={TRACE_ID}"


def test_wrapping_twice_appends_once():
    """wrap_formatter is idempotent."""
    once = wrap_formatter(logging.Formatter("%(message)s"))
    assert wrap_formatter(once) is once
    with bind_attempt(INFO):
        assert wrap_formatter(once).format(make_record()) == "hello" + SUFFIX


def test_suffix_goes_on_the_first_line():
    """With a traceback, the context stays on the line with the message."""
    formatter = wrap_formatter(logging.Formatter("%(message)s"))
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record(exc_info=sys.exc_info())
    with bind_attempt(INFO):
        text = formatter.format(record)
    first, _, rest = text.partition("\n")
    assert first == "hello" + SUFFIX
    assert rest.startswith("Traceback")
    assert rest.endswith("ValueError: boom")


def test_formatter_redacts_its_output():
    """Secrets in the message are hidden in the formatted text."""
    formatter = wrap_formatter(logging.Formatter("%(message)s"))
    record = make_record("calling %s", args=("https://h/x?api_key=s3cr3t",))
    assert formatter.format(record) == "calling https://h/x?api_key=***"


def test_redacting_formatter_works_without_the_filter():
    """A RedactingFormatter with LOG_FORMAT stamps the fields itself."""
    formatter = RedactingFormatter("%(name)s trace=%(trace_id)s attempt=%(attempt)s %(message)s")
    assert formatter.format(make_record()) == "shop trace=- attempt=- hello"
    with bind_attempt(INFO):
        assert formatter.format(make_record()) == f"shop trace={TRACE_ID} attempt=2 hello"


def test_log_format_renders_the_whole_context():
    """The documented format string shows trace, span, task and attempt."""
    formatter = RedactingFormatter(LOG_FORMAT)
    with bind_attempt(INFO):
        text = formatter.format(make_record())
    assert text.endswith(
        f"INFO shop trace={TRACE_ID} span={SPAN_ID} task=shop.charge[tid-1] attempt=2 hello"
    )


# --- install --------------------------------------------------------------------


def test_install_adds_filter_and_wraps_once(stream_logger):
    """install() twice leaves one filter and one wrapper on each handler."""
    logger, handler = stream_logger
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    install([handler])
    install([handler])
    assert sum(isinstance(f, AttemptContextFilter) for f in handler.filters) == 1
    with bind_attempt(INFO):
        logger.info("charged")
    assert output(handler) == "INFO charged" + SUFFIX + "\n"


def test_install_covers_records_of_child_loggers(stream_logger):
    """Records propagated from child loggers are stamped too (the filter is on handlers)."""
    logger, handler = stream_logger
    install_on_logger(logger)
    with bind_attempt(INFO):
        logging.getLogger(logger.name + ".child").warning("slow")
    assert output(handler) == "slow" + SUFFIX + "\n"


def test_install_on_logger_by_name(stream_logger):
    """install_on_logger() also takes a logger's name."""
    logger, handler = stream_logger
    install_on_logger(logger.name)
    assert isinstance(handler.formatter, RedactingFormatter)


# --- redact ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", "Authorization: ***"),
        ("proxy-authorization: Basic dXNlcjpwYXNz", "proxy-authorization: ***"),
        ("Cookie: session=abc; theme=dark", "Cookie: ***"),
        ("SET-COOKIE: id=a3fWa; Secure", "SET-COOKIE: ***"),
        ("X-Api-Key: k-123\nAccept: */*", "X-Api-Key: ***\nAccept: */*"),
        ("x-auth-token:tok", "x-auth-token:***"),
        ("Api-Key: 123", "Api-Key: ***"),
        ("Authorization: 'Bearer abc'", "Authorization: ***"),
    ],
)
def test_redact_header_lines(text, expected):
    """'Name: value' lines of credential headers keep the name, lose the value."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "{'Authorization': 'Bearer abc', 'Accept': 'text/plain'}",
            "{'Authorization': '***', 'Accept': 'text/plain'}",
        ),
        ('{"x-api-key": "k1", "page": "2"}', '{"x-api-key": "***", "page": "2"}'),
        ("[('Cookie', b'sid=1')]", "[('Cookie', b'***')]"),
        ("{'password': 'hunter2'}", "{'password': '***'}"),
        ("{'client_secret': 'it\\'s'}", "{'client_secret': '***'}"),
    ],
)
def test_redact_mapping_forms(text, expected):
    """Dict, JSON and header-tuple forms hide the value inside its quotes."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://h/v1?api_key=abc&page=2", "GET https://h/v1?api_key=***&page=2"),
        ("https://h/?page=1&ACCESS_TOKEN=abc#top", "https://h/?page=1&ACCESS_TOKEN=***#top"),
        ("/cb?code=1&client_secret=x&state=y", "/cb?code=1&client_secret=***&state=y"),
        ("?key=AIza&sig=zz&apikey=1&api-key=2", "?key=***&sig=***&apikey=***&api-key=***"),
        ("?token=a&refresh_token=b&secret=c", "?token=***&refresh_token=***&secret=***"),
        (
            "?password=a&passwd=b&signature=c&auth=d",
            "?password=***&passwd=***&signature=***&auth=***",
        ),
        (
            "s3/o?X-Amz-Signature=ab12&X-Amz-Credential=AK",
            "s3/o?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("'https://h/?token=abc'", "'https://h/?token=***'"),
    ],
)
def test_redact_query_parameters(text, expected):
    """Secret-looking query parameters keep their name and lose their value."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:p4ss@localhost:6379/1", "redis://:***@localhost:6379/1"),
        ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
    ],
)
def test_redact_url_passwords(text, expected):
    """The password of a URL's user info is hidden (broker and Redis URLs)."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "charged invoice 42 in 0.21 s",
        "see https://h/v1?page=2&monkey=1&keyboard=us",
        "a key: value pair, the token count, 10:30:00",
        "Authorization header missing",
        "{'Accept': 'application/json', 'key_id': 'k1'}",
        "http://example.com:8080/path",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    """Text without a credential in one of the known forms is unchanged."""
    assert redact(text) == text


@given(st.text(alphabet=st.characters(blacklist_characters="?&;=:@'\"\\")))
def test_redact_leaves_text_without_delimiters_alone(text):
    """Without ':', '=', '@', quotes or query delimiters nothing can be a secret."""
    assert redact(text) == text


@given(st.text())
def test_redact_is_idempotent(text):
    """Redacting redacted text changes nothing (and never raises)."""
    once = redact(text)
    assert redact(once) == once


SECRETS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=",
    min_size=8,
    max_size=40,
).filter(lambda s: "***" not in s)
HEADER_NAMES = st.sampled_from(
    ["Authorization", "proxy-authorization", "Cookie", "Set-Cookie", "X-Api-Key", "x-auth-token"]
)
PARAM_NAMES = st.sampled_from(
    [
        "api_key",
        "apikey",
        "api-key",
        "key",
        "token",
        "access_token",
        "refresh_token",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "signature",
        "sig",
        "auth",
    ]
)
MAPPING_NAMES = st.sampled_from(["Authorization", "Cookie", "X-API-KEY", "password", "token"])


@st.composite
def planted(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(SECRETS)
    form = draw(st.integers(0, 4))
    if form == 0:
        snippet = (
            f"{draw(HEADER_NAMES)}: {draw(st.sampled_from(['', 'Bearer ', 'Basic ']))}{secret}"
        )
    elif form == 1:
        q = draw(st.sampled_from(["'", '"']))
        snippet = f"{{{q}{draw(MAPPING_NAMES)}{q}: {q}{secret}{q}}}"
    elif form == 2:
        name = draw(PARAM_NAMES).upper() if draw(st.booleans()) else draw(PARAM_NAMES)
        snippet = f"https://api.example/v1?page=2&{name}={secret}&x=1"
    elif form == 3:
        secret = secret.replace("/", "%2F")  # a URL's password is percent-encoded
        snippet = f"redis://user:{secret}@cache:6379/0"
    else:
        snippet = f"('{draw(HEADER_NAMES)}', b'{secret}')"
    return secret, snippet


@given(planted(), st.text(), st.text())
def test_planted_secret_never_survives(plant, before, after):
    """A secret in any known form, amid arbitrary text on other lines, is hidden."""
    secret, snippet = plant
    assume(secret not in before and secret not in after)
    assert secret not in redact(f"{before}\n{snippet}\n{after}")


def test_secret_names():
    """is_secret_name() knows credential headers and parameters, case-insensitively."""
    assert all(map(is_secret_name, ["Authorization", "COOKIE", "x-api-key", "client_secret"]))
    assert not any(map(is_secret_name, ["Accept", "key_id", "page", "Idempotency-Key"]))


# --- format_outcome -------------------------------------------------------------


def test_outcome_line_for_a_retry():
    """A failed attempt names verdict, cause, duration and the next countdown."""
    line = format_outcome(
        outcome="failed",
        verdict="transient",
        cause="HTTP 503 from api.example.com",
        duration=0.2134,
        countdown=3.4,
        final_state=None,
        attempt=2,
    )
    assert line == (
        "attempt 2 failed: transient (HTTP 503 from api.example.com) after 0.21 s; retry in 3.4 s"
    )


def test_outcome_line_for_a_final_state():
    """A last attempt names its final state instead of a countdown."""
    line = format_outcome(
        outcome="failed",
        verdict="permanent",
        cause="HTTP 404 from api.example.com",
        duration=0.05,
        countdown=None,
        final_state="FAILURE",
        attempt=1,
    )
    assert line == (
        "attempt 1 failed: permanent (HTTP 404 from api.example.com) after 0.05 s; "
        "final state FAILURE"
    )


def test_outcome_line_takes_the_bound_attempt_number():
    """Without attempt=, the number comes from the current attempt."""
    with bind_attempt(INFO):
        line = format_outcome(
            outcome="succeeded",
            verdict=None,
            cause=None,
            duration=1.0,
            countdown=None,
            final_state="SUCCESS",
        )
    assert line == "attempt 2 succeeded after 1.0 s; final state SUCCESS"


def test_outcome_line_is_one_safe_line():
    """A cause with line breaks or a secret stays on one line, redacted."""
    line = format_outcome(
        outcome="failed",
        verdict="transient",
        cause="boom\nGET /x?token=abc",
        duration=0,
        countdown=1,
        final_state=None,
        attempt=1,
    )
    assert (
        line
        == r"attempt 1 failed: transient (boom\x0aGET /x?token=***) after 0.0 s; retry in 1.0 s"
    )


# --- JSON -----------------------------------------------------------------------


def test_json_formatter_emits_the_context():
    """Each record is one JSON object with the context fields."""
    with bind_attempt(INFO):
        data = json.loads(JsonFormatter().format(make_record("charged")))
    assert data["message"] == "charged"
    assert (data["trace_id"], data["span_id"], data["task_id"], data["attempt"]) == (
        TRACE_ID,
        SPAN_ID,
        "tid-1",
        2,
    )


def test_json_formatter_outside_an_attempt():
    """Outside an attempt the context fields are "-"."""
    data = json.loads(JsonFormatter().format(make_record()))
    assert data["trace_id"] == data["attempt"] == "-"


def test_json_formatter_redacts_values():
    """Messages, extras and values under secret-looking keys are redacted."""
    record = make_record(
        "GET https://h/?api_key=k1",
        password="hunter2",
        headers={"Authorization": "Bearer t0k", "Accept": "*/*"},
        note='said "Cookie: c=1"',
    )
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "GET https://h/?api_key=***"
    assert data["password"] == "***"
    assert data["headers"] == {"Authorization": "***", "Accept": "*/*"}
    assert data["note"] == 'said "Cookie: ***"'


def test_json_formatter_is_not_wrapped_again():
    """install() leaves a JsonFormatter as it is: no text appended to the JSON."""
    formatter = JsonFormatter()
    assert wrap_formatter(formatter) is formatter


def test_foreign_json_formatter_gets_no_suffix():
    """A python-json-logger formatter wrapped by install() keeps valid JSON output."""
    formatter = wrap_formatter(PlainJson("%(message)s"))
    record = make_record("x")
    with bind_attempt(INFO):
        AttemptContextFilter().filter(record)
        data = json.loads(formatter.format(record))
    assert data["trace_id"] == TRACE_ID


def test_json_formatter_names_the_extra_when_missing(monkeypatch):
    """Without python-json-logger, building one says which extra to install."""
    monkeypatch.setitem(sys.modules, "pythonjsonlogger", None)
    monkeypatch.setitem(sys.modules, "pythonjsonlogger.json", None)
    monkeypatch.setitem(sys.modules, "pythonjsonlogger.jsonlogger", None)
    with pytest.raises(ImportError, match=r"pip install celery-resilience\[json-logs\]"):
        JsonFormatter()
