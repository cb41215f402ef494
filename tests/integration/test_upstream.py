"""The flaky upstream behaves as scripted, seen through a real ``requests`` client."""

from __future__ import annotations

import email.utils
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from example_project.upstream import (
    RequestRecord,
    Response,
    Upstream,
    UpstreamClient,
    closed_port_url,
)
from tests.helpers import REPO_ROOT
from tests.helpers.polling import wait_until


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A pooling client, as the library's tasks use."""
    with requests.Session() as session:
        yield session


def test_script_answers_in_order_then_forever(upstream: Upstream, session: requests.Session):
    """A script gives its responses in order, then its ``then`` answer on every call."""
    upstream.script("/pay", [503, Response(502), 429], then=201)
    statuses = [session.get(f"{upstream.url}/pay/{i}").status_code for i in range(6)]
    assert statuses == [503, 502, 429, 201, 201, 201]


def test_longest_prefix_wins_and_root_answers_200(upstream: Upstream, session: requests.Session):
    """The longest registered prefix answers; other paths get the default 200."""
    upstream.script("/a", [], then=500)
    upstream.script("/a/b", [], then=404)
    assert session.get(f"{upstream.url}/a/b/c").status_code == 404
    assert session.get(f"{upstream.url}/a/x").status_code == 500
    assert session.get(f"{upstream.url}/ab").status_code == 200  # "/a" does not cover "/ab"
    assert [r.prefix for r in upstream.requests()] == ["/a/b", "/a", "/"]


def test_default_body_counts_calls(upstream: Upstream, session: requests.Session):
    """The default body says ok, the path, and the call number within the script."""
    upstream.script("/n", [503])
    assert session.get(f"{upstream.url}/n/1").json() == {"ok": False, "path": "/n/1", "n": 1}
    assert session.get(f"{upstream.url}/n/2").json() == {"ok": True, "path": "/n/2", "n": 2}


def test_phases_switch_on_time(upstream: Upstream, session: requests.Session):
    """Phases answer by the time since they were set: 503 for 0.3 s, then 200."""
    set_at = time.monotonic()
    upstream.phases("/ph", [(0.3, 503), (None, 200)])
    assert session.get(f"{upstream.url}/ph").status_code == 503
    wait_until(lambda: session.get(f"{upstream.url}/ph").status_code == 200, timeout=3)
    assert time.monotonic() - set_at >= 0.3


def test_a_degraded_upstream_fails_a_seeded_share_of_calls_then_recovers(
    upstream: Upstream, session: requests.Session
):
    """``degrade(share=...)`` fails that share of calls at random, the same calls for the
    same seed, and answers 200 once its time is up."""

    def run() -> list[int]:
        upstream.degrade("/flaky", 0.5, share=0.4, seed=7)
        return [session.get(f"{upstream.url}/flaky/{i}").status_code for i in range(200)]

    first = run()
    assert 0.3 < first.count(503) / len(first) < 0.5
    assert run() == first
    wait_until(lambda: session.get(f"{upstream.url}/flaky/x").status_code == 200, timeout=3)


def test_an_overloaded_upstream_serves_its_capacity_and_sheds_the_rest(
    upstream: Upstream, session: requests.Session
):
    """``degrade(capacity=n)`` answers at most n calls in any second; the rest get 503."""
    upstream.degrade("/busy", 30.0, capacity=5)
    statuses = [session.get(f"{upstream.url}/busy/{i}").status_code for i in range(12)]
    assert statuses.count(200) == 5
    assert statuses[:5] == [200] * 5
    with pytest.raises(ValueError, match="capacity"):
        upstream.degrade("/busy", 1.0, capacity=0)


def test_retry_after_in_seconds(upstream: Upstream, session: requests.Session):
    """``retry_after`` sends whole seconds, rounded up."""
    upstream.script("/ra", [Response(429, retry_after=1.2)])
    assert session.get(f"{upstream.url}/ra").headers["Retry-After"] == "2"


def test_retry_after_as_http_date(upstream: Upstream, session: requests.Session):
    """``retry_after_date`` sends an HTTP-date that many seconds after the answer."""
    upstream.script("/rd", [Response(503, retry_after_date=30)])
    answer = session.get(f"{upstream.url}/rd")
    when = email.utils.parsedate_to_datetime(answer.headers["Retry-After"]).timestamp()
    assert 28 <= when - time.time() <= 31


def test_delay_beats_client_timeout(upstream: Upstream, session: requests.Session):
    """An answer slower than the client's timeout makes ``requests`` raise ReadTimeout."""
    upstream.script("/slow", [Response.slow(2.0)])
    with pytest.raises(requests.ReadTimeout):
        session.get(f"{upstream.url}/slow", timeout=0.2)
    assert upstream.count("/slow") == 1  # recorded while still in flight


def test_reset_gives_connection_error(upstream: Upstream, session: requests.Session):
    """A reset aborts the connection: ConnectionError, recorded with status None."""
    upstream.script("/reset", [Response.connection_reset()])
    with pytest.raises(requests.ConnectionError) as caught:
        session.get(f"{upstream.url}/reset", timeout=5)
    assert "reset" in str(caught.value).lower()
    assert upstream.requests("/reset")[0].status is None
    assert session.get(f"{upstream.url}/reset", timeout=5).status_code == 200


def test_closed_port_is_refused():
    """Nothing listens at ``closed_port_url()``: the connection is refused."""
    with pytest.raises(requests.ConnectionError):
        requests.get(closed_port_url(), timeout=2)


def test_records_method_headers_body_and_status(upstream: Upstream, session: requests.Session):
    """Every request is recorded with its method, path, query, headers, body and status."""
    upstream.script("/rec", [422])
    before = time.time()
    session.post(f"{upstream.url}/rec/9?x=1", json={"a": 1}, headers={"Idempotency-Key": "k-1"})
    (record,) = upstream.requests("/rec")
    assert (record.method, record.path, record.query) == ("POST", "/rec/9", "x=1")
    assert record.header("idempotency-key") == "k-1"
    assert record.json() == {"a": 1}
    assert (record.status, record.prefix) == (422, "/rec")
    assert before <= record.start <= record.end <= time.time()
    assert RequestRecord.from_json(record.to_json()) == record


def test_clear_and_reset(upstream: Upstream, session: requests.Session):
    """``clear`` forgets records and restarts counters; ``reset`` also drops scripts."""
    upstream.script("/c", [503])
    session.get(f"{upstream.url}/c")
    upstream.clear()
    assert upstream.count() == 0
    assert session.get(f"{upstream.url}/c").status_code == 503  # the script starts over
    upstream.reset()
    assert upstream.count() == 0
    assert session.get(f"{upstream.url}/c").status_code == 200


def test_max_in_flight_with_concurrent_clients(upstream: Upstream):
    """Five slow requests sent at once are five in flight at once."""
    upstream.script("/conc", [], then=Response.slow(0.5))
    barrier = threading.Barrier(5, timeout=5)

    def call() -> None:
        barrier.wait()
        requests.get(f"{upstream.url}/conc", timeout=5)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert upstream.count("/conc") == 5
    assert upstream.max_in_flight("/conc") == 5
    assert upstream.max_in_flight("/") == 0


def test_response_round_trips_json():
    """A response survives ``to_json``/``from_json``; bad values are refused."""
    response = Response(429, headers={"X-A": "b"}, body=[1], delay=0.1, retry_after=3)
    assert Response.from_json(response.to_json()) == response
    with pytest.raises(ValueError):
        Response(99)


@pytest.fixture
def standalone() -> Iterator[str]:
    """An upstream started as ``python -m example_project.upstream --port 0``; its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project.upstream", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=15), "the upstream printed no URL"
        yield process.stdout.readline().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(10) == 0
        finally:
            process.kill()
            process.wait(5)
            process.stdout.close()


def test_control_api_through_client(standalone: str):
    """``UpstreamClient`` scripts and reads a separately started upstream over HTTP."""
    client = UpstreamClient(standalone)
    assert client.healthy()
    client.script("/x", [503, Response(429, retry_after=1)], then=Response.slow(0.3))
    client.phases("/p", [(60, 502), (None, 200)])
    with requests.Session() as session:
        assert session.get(f"{standalone}/x").status_code == 503
        assert session.get(f"{standalone}/x").headers["Retry-After"] == "1"
        assert session.get(f"{standalone}/p").status_code == 502
        threads = [
            threading.Thread(target=requests.get, args=(f"{standalone}/x",), kwargs={"timeout": 5})
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert client.count() == 5  # control requests are not recorded
    assert [r.status for r in client.requests("/x")] == [503, 429, 200, 200]
    assert client.max_in_flight("/x") == 2
    client.clear()
    assert client.count() == 0
    client.reset()
    assert requests.get(f"{standalone}/p", timeout=5).status_code == 200
