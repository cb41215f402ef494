"""The oldest Redis the state store runs on is checked when a worker starts.

A Redis older than 6.2 cannot be had here, so a tiny server speaking the Redis protocol
stands in for one: it answers ``INFO`` with an old ``redis_version`` and ``+OK`` to the
rest (the client's handshake). The accepted case runs against the private redis-server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_resilience import ResilienceConfigError, resilient_task
from celery_resilience.integration.hooks import check_store_version
from celery_resilience.state.connect import connect
from celery_resilience.state.version import (
    MIN_REDIS_VERSION,
    parse_version,
    server_version,
    version_problem,
)
from tests.helpers.redis_server import RedisServer


def _serve_old_redis(server: socket.socket, version: str, stop: threading.Event) -> None:
    info = f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n".encode()
    server.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(0.1)
            buffer = b""
            while not stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                # One reply per complete command (an array: *<n>\r\n then n bulk strings).
                while buffer.startswith(b"*"):
                    parts = buffer.split(b"\r\n")
                    count = int(parts[0][1:])
                    if len(parts) < 1 + 2 * count + 1:
                        break
                    words = [parts[2 + 2 * i] for i in range(count)]
                    consumed = sum(len(p) + 2 for p in parts[: 1 + 2 * count])
                    buffer = buffer[consumed:]
                    if words and words[0].upper() == b"INFO":
                        conn.sendall(b"$%d\r\n%s\r\n" % (len(info), info))
                    elif words and words[0].upper() == b"HELLO":  # RESP3 came with Redis 6
                        conn.sendall(b"-ERR unknown command 'HELLO'\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")


@pytest.fixture
def old_redis() -> Iterator[str]:
    """A URL answering like a Redis 5.0.7 (bound to 127.0.0.1, closed at the end)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()
    thread = threading.Thread(target=_serve_old_redis, args=(server, "5.0.7", stop), daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _app(url: str) -> Celery:
    app = Celery("v", broker="memory://", set_as_current=False)
    app.conf.resilience_backend_url = url

    @resilient_task(app=app, name="v.t", shared=False)
    def t() -> None:
        """A resilient task, so that the app needs a state store."""

    return app


@pytest.mark.parametrize(
    ("text", "version"),
    [("6.2.14", (6, 2, 14)), ("7.2", (7, 2)), (b"8.0.1", (8, 0, 1)), ("x", None), (None, None)],
)
def test_versions_are_read(text: object, version: tuple[int, ...] | None) -> None:
    assert parse_version(text) == version


def test_only_versions_older_than_the_minimum_are_a_problem() -> None:
    assert MIN_REDIS_VERSION == (6, 2)
    assert version_problem((6, 2, 0), "h") is None
    assert version_problem((7, 4), "h") is None
    assert version_problem(None, "h") is None  # a server that does not say is not refused
    assert version_problem((6, 0, 16), "h:6379/0") == (
        "the state store h:6379/0 runs Redis 6.0.16; celery-resilience needs Redis 6.2 or "
        "newer (its scripts read TIME before they write; dead letters use XTRIM MINID)"
    )


@pytest.mark.integration
def test_the_private_redis_passes_the_check(redis_server: RedisServer) -> None:
    client = connect(redis_server.url(0))
    try:
        version = server_version(client)
    finally:
        client.close()
    assert version is not None
    assert version >= MIN_REDIS_VERSION
    check_store_version(_app(redis_server.url(0)))


@pytest.mark.integration
def test_an_old_redis_is_refused_with_one_line(old_redis: str) -> None:
    with pytest.raises(ResilienceConfigError, match=r"runs Redis 5\.0\.7; .* needs Redis 6\.2"):
        check_store_version(_app(old_redis))


@pytest.mark.integration
def test_a_worker_on_an_old_redis_stops_at_start(old_redis: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``celery worker`` exits non-zero at once, its last line saying why, no traceback."""
    (tmp_path / "oldapp.py").write_text(
        "from celery import Celery\n"
        "from celery_resilience import resilient_task\n"
        "app = Celery('old', broker='memory://')\n"
        f"app.conf.resilience_backend_url = {old_redis!r}\n"
        "@resilient_task(app=app, name='old.t')\n"
        "def t():\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "oldapp", "worker", "-P", "solo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("celery-resilience: the state store 127.0.0.1:"), done.stderr
    assert "runs Redis 5.0.7; celery-resilience needs Redis 6.2 or newer" in last
    assert "Traceback" not in done.stderr


def test_an_unreachable_store_is_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    """No answer at start: the check is skipped with a warning (the tasks fall back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_store_version(_app(f"redis://127.0.0.1:{port}/0"))
    assert "was not checked" in caplog.text
