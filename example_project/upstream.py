"""A flaky HTTP upstream on 127.0.0.1, for the tests, the demo and the benchmarks.

The upstream answers every request from a *script* chosen by the request path: the
longest registered path prefix wins, and ``/`` (answer 200) is the default. A script is
either a list of answers given in order (then one answer forever), or time-based phases
(e.g. 503 for 20 s, then 200). Every request is recorded, so a test can count calls,
read their headers and see how many were in flight at once::

    with Upstream() as upstream:
        upstream.script("/pay", [Response(503, retry_after=2), Response.connection_reset()])
        upstream.phases("/crm", [(20.0, 503), (None, 200)])
        requests.get(upstream.url + "/pay/1", timeout=5)   # 503, Retry-After: 2
        assert upstream.count("/pay") == 1

A separately started upstream (``python -m example_project.upstream --port 8080``) is
scripted over HTTP, under ``/_upstream/``, with :class:`UpstreamClient`, which has the same
methods as :class:`Upstream`. Control requests are never recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import logging
import math
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

__all__ = [
    "CONTROL_PREFIX",
    "RequestRecord",
    "Response",
    "Upstream",
    "UpstreamClient",
    "closed_port_url",
    "main",
]

CONTROL_PREFIX = "/_upstream/"
"""Path under which the control API lives; requests there are never recorded."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    """One scripted answer; ``Response(503, retry_after=2)``, or just ``503`` in a script.

    ``body`` is any JSON value; ``None`` means ``{"ok": status < 400, "path": ..., "n": k}``
    where ``k`` counts the calls answered by the script. ``delay`` sleeps before answering
    (to be slower than a client's timeout). ``reset`` aborts the TCP connection without an
    answer (the client sees a connection reset). ``retry_after`` sets ``Retry-After`` in
    whole seconds (rounded up); ``retry_after_date`` sets it as an HTTP-date that many
    seconds after the answer.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    body: Any = field(default=None, hash=False)
    delay: float = 0.0
    reset: bool = False
    retry_after: float | None = None
    retry_after_date: float | None = None

    def __post_init__(self) -> None:
        """Reject values no HTTP server could answer."""
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be 100..599, not {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, not {self.delay}")
        for name in ("retry_after", "retry_after_date"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")

    @classmethod
    def slow(cls, delay: float, status: int = 200) -> Response:
        """Answer ``status`` after ``delay`` seconds."""
        return cls(status, delay=delay)

    @classmethod
    def connection_reset(cls, delay: float = 0.0) -> Response:
        """Abort the connection (after ``delay`` seconds) without answering."""
        return cls(delay=delay, reset=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Response:
        """Rebuild a response from :meth:`to_json` output."""
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that :meth:`from_json` reads back."""
        return asdict(self)

    def wire_headers(self, now: float) -> dict[str, str]:
        """Return the headers to send when answering at ``now`` (a ``time.time()``)."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.retry_after))
        if self.retry_after_date is not None:
            when = now + self.retry_after_date
            headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
        return headers

    def wire_body(self, path: str, n: int) -> bytes:
        """Return the JSON body for call number ``n`` to ``path``."""
        body = {"ok": self.status < 400, "path": path, "n": n} if self.body is None else self.body
        return json.dumps(body).encode()


def _as_response(value: Response | int) -> Response:
    return value if isinstance(value, Response) else Response(value)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the upstream received (``status`` is ``None`` for a reset).

    A request is recorded as soon as its answer is chosen, so it counts while in flight;
    until answered, ``end`` is the planned end (``start`` plus the scripted delay).
    """

    start: float
    end: float
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(hash=False)
    body: str
    status: int | None
    prefix: str

    def json(self) -> Any:
        """Return the request body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """Return a received header, matched case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        """Rebuild a record from :meth:`to_json` output."""
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that :meth:`from_json` reads back."""
        return asdict(self)


def max_overlap(records: Iterable[RequestRecord]) -> int:
    """Return the most records whose ``[start, end]`` intervals overlap at one time."""
    events = sorted([(r.start, 1) for r in records] + [(r.end, -1) for r in records])
    best = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start
        current += step
        best = max(best, current)
    return best


def _normalise_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"a prefix starts with '/': {prefix!r}")
    if prefix.startswith(CONTROL_PREFIX):
        raise ValueError(f"{CONTROL_PREFIX} is reserved for the control API")
    return prefix.rstrip("/") or "/"


def _covers(prefix: str, path: str) -> bool:
    """Whether a script for ``prefix`` answers ``path`` ("/pay" covers "/pay/1", not "/payx")."""
    return prefix in ("/", path) or path.startswith(prefix + "/")


def _check_phases(
    phases: Sequence[tuple[float | None, Response | int]],
) -> list[tuple[float | None, Response]]:
    if not phases:
        raise ValueError("phases needs at least one (seconds, response) pair")
    checked = []
    for index, (seconds, response) in enumerate(phases):
        if seconds is None and index != len(phases) - 1:
            raise ValueError("only the last phase may last forever (seconds=None)")
        if seconds is not None and seconds < 0:
            raise ValueError(f"a phase lasts >= 0 seconds, not {seconds}")
        checked.append((seconds, _as_response(response)))
    return checked


class _Plan(ABC):
    """How one prefix answers; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def answer(self, now: float) -> tuple[Response, int]:
        """Return the answer to the next call (at monotonic time ``now``) and its number."""
        self.calls += 1
        return self._pick(self.calls, now), self.calls

    @abstractmethod
    def _pick(self, n: int, now: float) -> Response: ...


class _Script(_Plan):
    def __init__(self, responses: Sequence[Response], then: Response) -> None:
        super().__init__()
        self.responses = tuple(responses)
        self.then = then

    def _pick(self, n: int, now: float) -> Response:
        return self.responses[n - 1] if n <= len(self.responses) else self.then


class _Phases(_Plan):
    def __init__(self, phases: Sequence[tuple[float | None, Response]]) -> None:
        super().__init__()
        self.phases = tuple(phases)
        self.started = time.monotonic()

    def _pick(self, n: int, now: float) -> Response:
        elapsed = now - self.started
        for seconds, response in self.phases:
            if seconds is None or elapsed < seconds:
                return response
            elapsed -= seconds
        return self.phases[-1][1]  # the last phase holds once all have run out


class _Degraded(_Plan):
    """For ``seconds``: fail a ``share`` of calls at random, or every call beyond
    ``capacity`` a second (an overloaded upstream sheds the excess at once); then 200."""

    def __init__(
        self, seconds: float, share: float, capacity: float | None, status: int, seed: int
    ) -> None:
        super().__init__()
        self.until = time.monotonic() + seconds
        self.share = share
        self.capacity = capacity
        self.status = status
        self.random = random.Random(seed)
        self.served: deque[float] = deque()

    def _pick(self, n: int, now: float) -> Response:
        if now >= self.until:
            return Response()
        if self.capacity is not None:
            while self.served and self.served[0] <= now - 1.0:
                self.served.popleft()
            if len(self.served) >= self.capacity:
                return Response(status=self.status)
            self.served.append(now)
            return Response()
        return Response(status=self.status) if self.random.random() < self.share else Response()


def _check_degrade(share: float, capacity: float | None, seconds: float) -> None:
    if seconds < 0:
        raise ValueError(f"a degradation lasts >= 0 seconds, not {seconds}")
    if capacity is None and not 0 <= share <= 1:
        raise ValueError(f"share must lie in [0, 1], not {share}")
    if capacity is not None and capacity <= 0:
        raise ValueError(f"capacity must be > 0 calls a second, not {capacity}")


class _Controls(ABC):
    """What both :class:`Upstream` and :class:`UpstreamClient` offer."""

    @abstractmethod
    def script(
        self, prefix: str, responses: Sequence[Response | int], then: Response | int | None = None
    ) -> None:
        """Answer ``responses`` in order for ``prefix``, then ``then`` (default 200) forever."""

    @abstractmethod
    def phases(self, prefix: str, phases: Sequence[tuple[float | None, Response | int]]) -> None:
        """Answer by time since now: ``[(20.0, 503), (None, 200)]`` is 503 for 20 s, then 200."""

    @abstractmethod
    def requests(self, prefix: str | None = None) -> list[RequestRecord]:
        """Return the recorded requests (answered by ``prefix``, if given) in arrival order."""

    def degrade(
        self,
        prefix: str,
        seconds: float,
        *,
        share: float = 0.0,
        capacity: float | None = None,
        status: int = 503,
        seed: int = 0,
    ) -> None:
        """For ``seconds`` from now, answer ``status`` to a ``share`` of calls at random
        (seeded), or, with ``capacity``, to every call beyond that many in any second
        (an overloaded upstream); then 200."""
        _check_degrade(share, capacity, seconds)
        self._degrade(
            {
                "prefix": _normalise_prefix(prefix),
                "seconds": seconds,
                "share": share,
                "capacity": capacity,
                "status": status,
                "seed": seed,
            }
        )

    @abstractmethod
    def _degrade(self, spec: Mapping[str, Any]) -> None:
        """Install a degradation checked by :meth:`degrade`."""

    @abstractmethod
    def clear(self) -> None:
        """Forget the recorded requests and restart every script's call counter."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the records and every script: all paths answer 200 again."""

    def count(self, prefix: str | None = None) -> int:
        """Return how many requests were recorded (for ``prefix``, if given)."""
        return len(self.requests(prefix))

    def max_in_flight(self, prefix: str | None = None) -> int:
        """Return the most requests (for ``prefix``, if given) handled at the same time."""
        return max_overlap(self.requests(prefix))


class _Scripted(_Controls):
    """The in-process scripts and records, shared by the server's handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, _Plan] = {"/": _Script((), Response())}
        self._records: dict[int, RequestRecord] = {}  # by arrival number
        self._arrivals = 0
        self._cleared_upto = 0  # late updates of records cleared meanwhile are dropped

    def script(
        self, prefix: str, responses: Sequence[Response | int], then: Response | int | None = None
    ) -> None:
        """Answer ``responses`` in order for ``prefix``, then ``then`` (default 200) forever."""
        plan = _Script(
            [_as_response(r) for r in responses], _as_response(200 if then is None else then)
        )
        self._set_plan(prefix, plan)

    def phases(self, prefix: str, phases: Sequence[tuple[float | None, Response | int]]) -> None:
        """Answer by time since now: ``[(20.0, 503), (None, 200)]`` is 503 for 20 s, then 200."""
        self._set_plan(prefix, _Phases(_check_phases(phases)))

    def _degrade(self, spec: Mapping[str, Any]) -> None:
        capacity = spec.get("capacity")
        plan = _Degraded(
            float(spec["seconds"]),
            float(spec.get("share", 0.0)),
            None if capacity is None else float(capacity),
            int(spec.get("status", 503)),
            int(spec.get("seed", 0)),
        )
        self._set_plan(str(spec["prefix"]), plan)

    def requests(self, prefix: str | None = None) -> list[RequestRecord]:
        """Return the recorded requests (answered by ``prefix``, if given) in arrival order."""
        wanted = None if prefix is None else _normalise_prefix(prefix)
        with self._lock:
            records = [self._records[k] for k in sorted(self._records)]
        return [r for r in records if wanted is None or r.prefix == wanted]

    def clear(self) -> None:
        """Forget the recorded requests and restart every script's call counter."""
        with self._lock:
            self._records.clear()
            self._cleared_upto = self._arrivals
            for plan in self._plans.values():
                plan.calls = 0

    def reset(self) -> None:
        """Forget the records and every script: all paths answer 200 again."""
        with self._lock:
            self._records.clear()
            self._cleared_upto = self._arrivals
            self._plans = {"/": _Script((), Response())}

    def _set_plan(self, prefix: str, plan: _Plan) -> None:
        key = _normalise_prefix(prefix)
        with self._lock:
            self._plans[key] = plan

    def _answer(self, path: str) -> tuple[int, str, Response, int]:
        """Choose the answer to ``path``: (arrival number, prefix, response, call number)."""
        with self._lock:
            self._arrivals += 1
            prefix = max((p for p in self._plans if _covers(p, path)), key=len)
            response, n = self._plans[prefix].answer(time.monotonic())
            return self._arrivals, prefix, response, n

    def _record(self, arrival: int, record: RequestRecord) -> None:
        """Store (or update) the record of request number ``arrival``."""
        with self._lock:
            if arrival > self._cleared_upto:
                self._records[arrival] = record


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests (keep-alive) from the server's scripts."""

    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    # headers and body go out in two writes: with Nagle's algorithm, the client's delayed
    # ACK would hold the body back ~40 ms
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        """Answer any method the same way."""
        start = time.time()
        url = urlsplit(self.path)
        body = self._read_body()
        if url.path.startswith(CONTROL_PREFIX):
            self._control(url.path.removeprefix(CONTROL_PREFIX), url.query, body)
            return
        scripted = self.server.scripted
        arrival, prefix, response, n = scripted._answer(url.path)
        record = RequestRecord(
            start=start,
            end=start + response.delay,  # planned; the real end is recorded when answered
            method=self.command,
            path=url.path,
            query=url.query,
            headers=dict(self.headers.items()),
            body=body.decode("utf-8", errors="replace"),
            status=None if response.reset else response.status,
            prefix=prefix,
        )
        scripted._record(arrival, record)  # counted from now on, while still in flight
        if response.delay and self.server.stopping.wait(response.delay):
            self.close_connection = True  # stopped while waiting: answer nothing
            return
        now = time.time()
        scripted._record(arrival, replace(record, end=now))
        if response.reset:
            self._abort()
        else:
            self._send(response.status, response.wire_headers(now), response.wire_body(url.path, n))

    # http.server dispatches on these names
    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # body framing we do not parse: do not reuse
        return b""

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _abort(self) -> None:
        """Close with SO_LINGER 0, so the client gets a RST instead of an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # the real close (and RST) follows when rfile is closed
        self.close_connection = True

    def _control(self, name: str, query: str, body: bytes) -> None:
        scripted = self.server.scripted
        try:
            data = json.loads(body) if body else {}
            result: Any = {"ok": True}
            if (self.command, name) == ("POST", "script"):
                then = data.get("then")
                scripted.script(
                    data["prefix"],
                    [Response.from_json(r) for r in data["responses"]],
                    then=None if then is None else Response.from_json(then),
                )
            elif (self.command, name) == ("POST", "phases"):
                phases = [(s, Response.from_json(r)) for s, r in data["phases"]]
                scripted.phases(data["prefix"], phases)
            elif (self.command, name) == ("POST", "degrade"):
                capacity = data.get("capacity")
                scripted.degrade(
                    data["prefix"],
                    float(data["seconds"]),
                    share=float(data.get("share", 0.0)),
                    capacity=None if capacity is None else float(capacity),
                    status=int(data.get("status", 503)),
                    seed=int(data.get("seed", 0)),
                )
            elif (self.command, name) == ("GET", "requests"):
                prefix = parse_qs(query).get("prefix", [None])[0]
                result = {"requests": [r.to_json() for r in scripted.requests(prefix)]}
            elif (self.command, name) == ("POST", "clear"):
                scripted.clear()
            elif (self.command, name) == ("POST", "reset"):
                scripted.reset()
            elif (self.command, name) != ("GET", "health"):
                self._send(404, {}, json.dumps({"error": f"no {self.command} {name}"}).encode())
                return
        except (KeyError, TypeError, ValueError) as exc:
            self._send(400, {}, json.dumps({"error": repr(exc)}).encode())
        else:
            self._send(200, {}, json.dumps(result).encode())

    def setup(self) -> None:
        """Register the connection, so the server can end it on stop."""
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        """Unregister the connection."""
        self.server.untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Log to ``logging`` at debug level instead of stderr."""
        _log.debug(format, *args)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its open keep-alive connections."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], scripted: _Scripted) -> None:
        self.scripted = scripted
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup (slow on some hosts)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket) -> None:
        """Remember an open connection."""
        with self._open_lock:
            self._open.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a connection its handler is done with."""
        with self._open_lock:
            self._open.discard(connection)

    def close_connections(self) -> None:
        """End every open connection (idle keep-alive ones included)."""
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Ignore clients that went away (timeouts, resets); report anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class Upstream(_Scripted):
    """The flaky upstream, served from a background thread; also a context manager.

    ``port=0`` picks a free port; after :meth:`stop`, :meth:`start` serves again on the same
    port with the same scripts and records.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port served on (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:43125``."""
        return f"http://{self.host}:{self._port}"

    def start(self) -> Upstream:
        """Start serving (no-op when serving already); return ``self``."""
        if self._server is None:
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"upstream-{self._port}",
                daemon=True,
            )
            self._server = server
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; delayed answers are abandoned."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Upstream:
        """Start and return the upstream."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the upstream."""
        self.stop()


class UpstreamClient(_Controls):
    """Scripts an upstream running elsewhere, through its ``/_upstream/`` control API."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def script(
        self, prefix: str, responses: Sequence[Response | int], then: Response | int | None = None
    ) -> None:
        """Answer ``responses`` in order for ``prefix``, then ``then`` (default 200) forever."""
        payload = {
            "prefix": _normalise_prefix(prefix),
            "responses": [_as_response(r).to_json() for r in responses],
            "then": None if then is None else _as_response(then).to_json(),
        }
        self._call("POST", "script", payload)

    def phases(self, prefix: str, phases: Sequence[tuple[float | None, Response | int]]) -> None:
        """Answer by time since now: ``[(20.0, 503), (None, 200)]`` is 503 for 20 s, then 200."""
        pairs = [[s, r.to_json()] for s, r in _check_phases(phases)]
        self._call("POST", "phases", {"prefix": _normalise_prefix(prefix), "phases": pairs})

    def _degrade(self, spec: Mapping[str, Any]) -> None:
        self._call("POST", "degrade", dict(spec))

    def requests(self, prefix: str | None = None) -> list[RequestRecord]:
        """Return the recorded requests (answered by ``prefix``, if given) in arrival order."""
        params = {} if prefix is None else {"prefix": prefix}
        data = self._call("GET", "requests", params=params)
        return [RequestRecord.from_json(r) for r in data["requests"]]

    def clear(self) -> None:
        """Forget the recorded requests and restart every script's call counter."""
        self._call("POST", "clear")

    def reset(self) -> None:
        """Forget the records and every script: all paths answer 200 again."""
        self._call("POST", "reset")

    def healthy(self) -> bool:
        """Return whether the upstream answers its health check."""
        try:
            return bool(self._call("GET", "health")["ok"])
        except requests.RequestException:
            return False

    def _call(
        self,
        method: str,
        name: str,
        payload: object = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        answer = requests.request(
            method,
            f"{self.url}{CONTROL_PREFIX}{name}",
            json=payload,
            params=params,
            timeout=self.timeout,
        )
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data


def closed_port_url() -> str:
    """Return an ``http://127.0.0.1:<port>`` URL where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print the URL on one line once listening."""
    parser = argparse.ArgumentParser(
        prog="python -m example_project.upstream",
        description="A scriptable flaky HTTP upstream (control API under /_upstream/).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks one")
    args = parser.parse_args(argv)
    stopped = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with Upstream(args.host, args.port) as upstream:
        print(upstream.url, flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
