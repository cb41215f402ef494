"""The task's outbound session, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from celery_resilience.integration import http as http_module
from celery_resilience.integration.http import (
    DEFAULT_TIMEOUT,
    ResilientSession,
    idempotency_key,
    session_for_process,
)
from celery_resilience.observability.tracing import AttemptInfo, bind_attempt

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Recorder:
    """What the local server saw: one (method, headers) pair per request."""

    url: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def headers(self, index: int = -1) -> dict[str, str]:
        return self.seen[index][1]


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            recorder.seen.append((self.command, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer  # noqa: N815 - the stdlib's names

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def session() -> Iterator[ResilientSession]:
    with ResilientSession() as s:
        yield s


def attempt(task_id: str = "task-1", number: int = 1) -> AttemptInfo:
    return AttemptInfo(
        trace_id=TRACE_ID,
        span_id=uuid.uuid4().hex[:16],
        task_id=task_id,
        task_name="shop.charge",
        attempt=number,
    )


# --- traceparent ----------------------------------------------------------------


def test_traceparent_matches_the_bound_attempt(server, session):
    """Inside an attempt each request carries the attempt's trace and span."""
    info = attempt()
    with bind_attempt(info):
        session.get(server.url)
    assert server.headers()["traceparent"] == f"00-{TRACE_ID}-{info.span_id}-01"


def test_callers_traceparent_is_kept(server, session):
    """A traceparent set by the caller is sent as it is."""
    own = f"00-{'a' * 32}-{'b' * 16}-00"
    with bind_attempt(attempt()):
        session.get(server.url, headers={"TraceParent": own})
    assert server.headers()["traceparent"] == own


def test_nothing_added_outside_an_attempt(server, session):
    """Outside an attempt the session sends neither traceparent nor Idempotency-Key."""
    session.post(server.url, data=b"x")
    assert "traceparent" not in server.headers()
    assert "idempotency-key" not in server.headers()


# --- Idempotency-Key ------------------------------------------------------------


def post_twice(session: ResilientSession, url: str, info: AttemptInfo) -> None:
    with bind_attempt(info):
        session.post(url, json={"n": 1})
        session.post(url, json={"n": 2})


def test_idempotency_key_stable_across_attempts(server, session):
    """The n-th POST of a retry carries the same key as the n-th POST of attempt 1."""
    post_twice(session, server.url, attempt(number=1))
    post_twice(session, server.url, attempt(number=2))
    keys = [headers["idempotency-key"] for _, headers in server.seen]
    assert keys[0] == keys[2]
    assert keys[1] == keys[3]


def test_idempotency_key_distinct_within_an_attempt(server, session):
    """The second POST of an attempt gets a key of its own."""
    post_twice(session, server.url, attempt())
    assert server.headers(0)["idempotency-key"] != server.headers(1)["idempotency-key"]


def test_idempotency_key_is_uuid5_of_task_and_position(server, session):
    """The key is idempotency_key(task_id, position): a UUID, version 5."""
    post_twice(session, server.url, attempt("9f1c2e3a"))
    key = server.headers(1)["idempotency-key"]
    assert key == idempotency_key("9f1c2e3a", 2)
    assert uuid.UUID(key).version == 5


def test_idempotency_key_differs_between_tasks(server, session):
    """Two tasks never share keys."""
    post_twice(session, server.url, attempt("task-a"))
    post_twice(session, server.url, attempt("task-b"))
    assert server.headers(0)["idempotency-key"] != server.headers(2)["idempotency-key"]


def test_patch_gets_a_key(server, session):
    """PATCH is not idempotent either: it gets a key."""
    with bind_attempt(attempt()):
        session.patch(server.url, data=b"x")
    assert server.headers()["idempotency-key"] == idempotency_key("task-1", 1)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_methods_get_no_key(server, session, method):
    """GET, PUT and DELETE are idempotent by definition: no key."""
    with bind_attempt(attempt()):
        session.request(method, server.url)
    assert "idempotency-key" not in server.headers()


def test_callers_key_is_kept_and_takes_no_position(server, session):
    """A caller's own key (any case) is sent unchanged; the next POST is still first."""
    with bind_attempt(attempt()):
        session.post(server.url, headers={"idempotency-key": "mine"})
        session.post(server.url)
    assert server.headers(0)["idempotency-key"] == "mine"
    assert server.headers(1)["idempotency-key"] == idempotency_key("task-1", 1)


def test_prepared_requests_get_the_headers(server, session):
    """session.send(prepared) is covered as well as session.post()."""
    prepared = session.prepare_request(requests.Request("POST", server.url, data=b"x"))
    with bind_attempt(attempt()):
        session.send(prepared)
    assert server.headers()["idempotency-key"] == idempotency_key("task-1", 1)
    assert server.headers()["traceparent"].startswith(f"00-{TRACE_ID}-")


def test_headers_are_never_logged(server, session, caplog):
    """The session logs nothing of its own, so no header value reaches a log."""
    caplog.set_level(logging.DEBUG)
    with bind_attempt(attempt()):
        session.post(server.url, headers={"Authorization": "Bearer s3cr3t"})
    assert not [r for r in caplog.records if r.name.startswith("celery_resilience")]
    assert "s3cr3t" not in caplog.text


# --- timeouts -------------------------------------------------------------------


class RecordingAdapter(requests.adapters.HTTPAdapter):
    """Answers every request itself and records the timeout it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[object] = []

    def send(self, request, **kwargs):
        self.timeouts.append(kwargs.get("timeout"))
        response = requests.Response()
        response.status_code = 204
        response.request = request
        response.url = request.url
        return response


@pytest.fixture
def adapter(session) -> RecordingAdapter:
    recording = RecordingAdapter()
    session.mount("http://", recording)
    return recording


def test_default_timeout_applied(session, adapter):
    """A call without a timeout gets DEFAULT_TIMEOUT, (3.05, 30.0)."""
    session.get("http://upstream.invalid/")
    assert adapter.timeouts == [DEFAULT_TIMEOUT] == [(3.05, 30.0)]


def test_explicit_none_gets_the_default(session, adapter):
    """timeout=None does not mean "forever": the default applies."""
    session.get("http://upstream.invalid/", timeout=None)
    assert adapter.timeouts == [DEFAULT_TIMEOUT]


def test_callers_timeout_wins(session, adapter):
    """A timeout given by the caller is used as it is."""
    session.get("http://upstream.invalid/", timeout=7)
    assert adapter.timeouts == [7]


def test_session_timeout_configurable():
    """ResilientSession(timeout=...) changes the default for that session."""
    with ResilientSession(timeout=(1.0, 5.0)) as configured:
        recording = RecordingAdapter()
        configured.mount("http://", recording)
        configured.get("http://upstream.invalid/")
    assert recording.timeouts == [(1.0, 5.0)]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_silent_upstream_times_out(silent_server):
    """Against an upstream that never answers, the session's read timeout fires."""
    started = time.monotonic()
    with ResilientSession(timeout=(1.0, 0.3)) as bounded, pytest.raises(requests.ReadTimeout):
        bounded.get(silent_server)
    assert time.monotonic() - started < 5


# --- one session per process ----------------------------------------------------


@pytest.fixture
def own_cache(monkeypatch):
    """An empty per-process cache for the test, the real one restored after it."""
    monkeypatch.setattr(http_module, "_sessions", {})
    monkeypatch.setattr(http_module, "_pid", None)


@pytest.mark.usefixtures("own_cache")
def test_session_for_process_is_shared():
    """Within one process the same session is handed out, per timeout."""
    assert session_for_process() is session_for_process()
    assert session_for_process(timeout=5.0) is session_for_process(timeout=5.0)
    assert session_for_process(timeout=5.0) is not session_for_process()
    assert session_for_process(timeout=5.0).timeout == 5.0


@pytest.mark.usefixtures("own_cache")
def test_session_for_process_renewed_after_fork(monkeypatch):
    """A process with another pid (a prefork child) gets a session of its own."""
    parent = session_for_process()
    monkeypatch.setattr(os, "getpid", lambda: -1)
    child = session_for_process()
    assert child is not parent
    assert session_for_process() is child


@pytest.mark.usefixtures("own_cache")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_session_for_process_in_a_forked_child():
    """In a real forked child, session_for_process() does not return the parent's."""
    parent = session_for_process()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, without pytest's cleanup
        try:
            os.write(write_end, b"new" if session_for_process() is not parent else b"old")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        answer = os.read(read_end, 16)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert answer == b"new"
    assert session_for_process() is parent


def test_module_name_does_not_shadow_stdlib():
    """The package's http module is imported by its full name; the stdlib http still works."""
    assert http_module.ResilientSession is ResilientSession
    assert BaseHTTPRequestHandler.__module__ == "http.server"


def test_no_cookie_travels_from_one_task_to_another():
    """A cookie set by one upstream's answer is not sent by a later call on the session."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "session=ALICE-SECRET; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        session = ResilientSession()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        session.get(url).close()
        session.get(url).close()
        session.get(url, cookies={"own": "1"}).close()
        session.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, None, "own=1"]
