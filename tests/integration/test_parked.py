"""The parked set's Lua operations against a private Redis, where it lives, and the releaser.

Each test has a key prefix of its own on the session's private Redis; time comes from the
server, so waits are bounded polls on short leases and delays.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from kombu.utils import json as kombu_json

from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.integration.parking import (
    PARKED_HEADER,
    broker_client,
    message_for,
    parked_set_for,
    parking_place,
    publish,
)
from celery_resilience.integration.releaser import Releaser, next_delay
from celery_resilience.integration.settings import read_settings
from celery_resilience.state.connect import describe
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.parked import (
    MAX_MESSAGE_BYTES,
    ParkedSet,
    ParkRefusedError,
    reports_persistence,
)
from tests.helpers.celery_apps import make_app
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer

MESSAGE = '{"task": "t", "args": [1], "kwargs": {}, "options": {}}'


@pytest.fixture
def prefix() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client(3) as c:
        yield c


@pytest.fixture
def parked(client: redis.Redis, prefix: str) -> ParkedSet:
    return ParkedSet(client, KeySpace(prefix))


def _park(parked: ParkedSet, delay: float = 0.0, **changes: Any) -> Any:
    fields: dict[str, Any] = {
        "task_name": "shop.charge",
        "task_id": uuid.uuid4().hex,
        "reason": "backoff",
        "delay": delay,
        "message": MESSAGE,
    }
    fields.update(changes)
    return parked.park(**fields)


# -- the Lua operations -------------------------------------------------------------------


def test_an_entry_is_claimed_once_it_is_due_not_before(parked: ParkedSet):
    """An entry parked for 0.3 s is not claimed at once, and is claimed once it is due."""
    entry = _park(parked, 0.3)
    assert entry.due == pytest.approx(entry.parked_at + 0.3, abs=1e-5)
    assert parked.claim_due(limit=10, lease=5) == []
    claimed = wait_until(
        lambda: parked.claim_due(limit=10, lease=5), timeout=10, what="the entry due"
    )
    assert [(e.id, e.message, e.task_id, e.reason, e.claims) for e in claimed] == [
        (entry.id, MESSAGE, entry.task_id, "backoff", 1)
    ]


def test_claims_are_earliest_due_first_and_bounded_by_limit(parked: ParkedSet, client):
    """Three due entries and a limit of two: the two earliest, then the third."""
    entries = [_park(parked, 0.0) for _ in range(3)]
    first = parked.claim_due(limit=2, lease=5)
    second = parked.claim_due(limit=2, lease=5)
    assert [e.id for e in first] == [e.id for e in entries[:2]]
    assert [e.id for e in second] == [entries[2].id]
    assert parked.claim_due(limit=2, lease=5) == []


def test_done_forgets_the_entry_and_its_count(parked: ParkedSet):
    """After done, the entry is gone from every count; a second done says so."""
    entry = _park(parked, 0.0, reason="rate_limited")
    assert parked.summary().by_reason == {"rate_limited": 1}
    parked.claim_due(limit=1, lease=5)
    assert parked.done(entry.id) is True
    assert parked.done(entry.id) is False
    summary = parked.summary()
    assert (summary.count, summary.claimed, summary.by_reason) == (0, 0, {})


def test_a_claim_whose_lease_ran_out_is_claimed_again(parked: ParkedSet):
    """A releaser that claimed and died: after its lease the entry is claimed again."""
    entry = _park(parked, 0.0)
    assert [e.id for e in parked.claim_due(limit=5, lease=0.2)] == [entry.id]
    assert parked.claim_due(limit=5, lease=0.2) == []  # the lease holds
    again = wait_until(
        lambda: parked.claim_due(limit=5, lease=5), timeout=10, what="the claim to run out"
    )
    assert [(e.id, e.claims) for e in again] == [(entry.id, 2)]


def test_a_postponed_claim_waits_again_and_is_not_counted_as_run_out(parked: ParkedSet):
    """A releaser that holds an entry back puts it back, due later, unpublished: claimed
    again when due, it counts one claim, not two (its earlier claim did not run out)."""
    entry = _park(parked, 0.0)
    assert [e.id for e in parked.claim_due(limit=5, lease=30.0)] == [entry.id]
    assert parked.postpone({entry.id: 0.2}) == 1
    assert parked.claim_due(limit=5, lease=30.0) == []  # due again in 0.2 s
    again = wait_until(
        lambda: parked.claim_due(limit=5, lease=30.0), timeout=10, what="the entry due again"
    )
    assert [(e.id, e.claims) for e in again] == [(entry.id, 1)]
    assert parked.postpone({"no-such-entry": 1.0}) == 0


def test_summary_counts_by_reason_claimed_and_the_earliest_due(parked: ParkedSet):
    """Count, by reason, claimed, expired claims and the earliest due time."""
    _park(parked, 0.0, reason="backoff")
    later = _park(parked, 100.0, reason="breaker_open")
    _park(parked, 200.0, reason="breaker_open")
    parked.claim_due(limit=5, lease=0.01)
    summary = wait_until(
        lambda: (s := parked.summary()).expired_claims == 1 and s, timeout=10, what="expiry"
    )
    assert summary.count == 3
    assert summary.claimed == 1
    assert summary.by_reason == {"backoff": 1, "breaker_open": 2}
    assert summary.oldest_due == pytest.approx(later.due, abs=1e-5)
    assert summary.oldest_due_in == pytest.approx(100.0, abs=5.0)


def test_release_now_by_id_reason_task_and_all(parked: ParkedSet):
    """release_now makes waiting entries due now, chosen by id, reason, task or all;
    a dry run only counts; entries already due or claimed are not counted."""
    a = _park(parked, 500.0, reason="backoff", task_name="t.a")
    b = _park(parked, 500.0, reason="breaker_open", task_name="t.a")
    c = _park(parked, 500.0, reason="breaker_open", task_name="t.b")
    _park(parked, 0.0, reason="breaker_open", task_name="t.b")  # due already
    assert parked.release_now(reason="breaker_open", dry_run=True) == 2
    assert parked.claim_due(limit=10, lease=5)[0].task_name == "t.b"  # only the due one
    assert parked.release_now(ids=[a.id, "f" * 32]) == 1
    assert [e.id for e in parked.claim_due(limit=10, lease=5)] == [a.id]
    assert parked.release_now(task_name="t.a", reason="breaker_open") == 1
    assert [e.id for e in parked.claim_due(limit=10, lease=5)] == [b.id]
    assert parked.release_now() == 1
    assert [e.id for e in parked.claim_due(limit=10, lease=5)] == [c.id]
    assert parked.release_now() == 0


def test_entries_lists_waiting_ones_by_due_time_with_filters(parked: ParkedSet):
    """entries(): earliest due first, without messages, filtered and bounded."""
    made = [
        _park(parked, 100.0 + i, reason="backoff" if i % 2 else "retry_after") for i in range(7)
    ]
    listed = parked.entries(limit=100)
    assert [e.id for e in listed] == [e.id for e in made]
    assert {e.message for e in listed} == {""}
    assert [e.id for e in parked.entries(limit=2, reason="backoff")] == [made[1].id, made[3].id]
    assert [e.id for e in parked.entries(limit=3)] == [e.id for e in made[:3]]
    assert parked.entries(task_name="nobody") == []


def test_a_message_above_the_cap_is_refused_and_nothing_is_stored(parked: ParkedSet):
    """A message above 1 MiB, an unknown reason, a negative delay: refused, nothing kept."""
    with pytest.raises(ParkRefusedError, match="bytes"):
        _park(parked, message="x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ParkRefusedError, match="reason"):
        _park(parked, reason="whenever")
    for delay in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ParkRefusedError, match="delay"):
            _park(parked, delay=delay)
    assert parked.summary().count == 0
    assert _park(parked, message="x" * MAX_MESSAGE_BYTES).message == "x" * MAX_MESSAGE_BYTES


def test_names_from_task_input_never_reach_a_key(parked: ParkedSet, client, prefix: str):
    """Odd task names and ids live in the entry's JSON, not in key names."""
    entry = _park(parked, 0.0, task_name="a}{b:c *", task_id="x{y}\n")
    assert parked.claim_due(limit=1, lease=5)[0].task_name == "a}{b:c *"
    keys = {k.decode() for k in client.scan_iter(match=f"{prefix}:*")}
    assert keys <= set(KeySpace(prefix).parked().all())
    assert all(entry.task_id not in k for k in keys)


def test_racing_releasers_claim_each_entry_exactly_once(parked: ParkedSet, redis_server):
    """Eight threads, each with its own client, claim 400 entries: each exactly once."""
    ids = {_park(parked, 0.0).id for _ in range(400)}
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def racer() -> None:
        with redis_server.client(3) as own:
            mine = ParkedSet(own, parked.keyspace)
            barrier.wait(10)
            for _ in range(200):  # bounded
                got = mine.claim_due(limit=7, lease=60)
                if not got:
                    return
                with lock:
                    claimed.extend(e.id for e in got)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert set(claimed) == ids


def test_first_delivery_lets_one_copy_through(parked: ParkedSet):
    """Two copies of one released entry: the first delivery is True, the second False."""
    assert parked.first_delivery("e1") is True
    assert parked.first_delivery("e1") is False
    assert parked.first_delivery("e2") is True


# -- persistence ----------------------------------------------------------------------------


def test_a_server_without_an_append_only_file_does_not_report_persistence(client):
    """The session's Redis runs with appendonly no."""
    assert reports_persistence(client) is False


@pytest.mark.integration
def test_aof_server_killed_and_restarted_with_1000_parked_loses_none(tmp_path, prefix: str):
    """1,000 parked (100 of them claimed by a releaser that then died), the server
    SIGKILLed and restarted: all 1,000 are there and are claimed, each once."""
    server = RedisServer(tmp_path / "aof", extra_args=["--appendonly", "yes"])
    with server:
        client = server.client(socket_timeout=5)
        try:
            assert reports_persistence(client) is True
            parked = ParkedSet(client, KeySpace(prefix))
            ids = {_park(parked, 0.0 if i < 100 else 0.5).id for i in range(1000)}
            assert len(parked.claim_due(limit=100, lease=1.0)) == 100
            server.kill()
            server.restart()
            summary = parked.summary()
            assert (summary.count, summary.claimed) == (1000, 100)
            seen: list[str] = []

            def drained() -> bool:
                seen.extend(e.id for e in parked.claim_due(limit=500, lease=60))
                return len(seen) >= 1000

            wait_until(drained, timeout=30, interval=0.1, what="every entry claimed")
            assert Counter(seen).most_common(1)[0][1] == 1
            assert set(seen) == ids
        finally:
            client.close()


# -- where it lives -------------------------------------------------------------------------


@pytest.fixture
def apps() -> Iterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        app.close()


def _app(apps: list[Celery], broker: str, **conf: Any) -> Celery:
    app = make_app("parking", broker=broker, backend=None, queue="q", set_as_current=False)
    app.conf.update(**conf)
    apps.append(app)
    return app


def test_a_redis_broker_holds_its_own_parked_set(apps, redis_server, prefix: str):
    """With a Redis broker the parked set lives in the broker's Redis, under the prefix of
    the state store, even when the state store is another database."""
    app = _app(
        apps,
        redis_server.url(4),
        resilience_backend_url=redis_server.url(5),
        resilience_key_prefix=prefix,
    )
    place = parking_place(app)
    assert (place.store, place.durable) == ("broker", True)
    assert place.where == describe(redis_server.client(4))
    assert place.parked.keys.due.startswith(f"{prefix}:parked:")
    assert parked_set_for(app) is not None


def test_another_broker_parks_in_the_state_store_only_with_an_append_only_file(
    apps, redis_server, tmp_path, prefix: str
):
    """An amqp broker: the state store if it writes an AOF, else nowhere (None)."""
    amqp = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    plain = _app(apps, amqp, resilience_backend_url=redis_server.url(2))
    place = parking_place(plain)
    assert (place.store, place.durable) == ("state store", False)
    assert parked_set_for(plain) is None
    with RedisServer(tmp_path / "aof", extra_args=["--appendonly", "yes"]) as aof:
        durable = _app(apps, amqp, resilience_backend_url=aof.url(0))
        assert parking_place(durable).durable is True
        assert parked_set_for(durable) is not None


def test_parking_off_means_no_parked_set(apps, redis_server):
    """resilience_park_after = 0 turns parking off; a negative value is refused."""
    assert parked_set_for(_app(apps, redis_server.url(4), resilience_park_after=0)) is None
    with pytest.raises(ResilienceConfigError, match="resilience_park_after"):
        read_settings(_app(apps, redis_server.url(4), resilience_park_after=-1))
    assert read_settings(_app(apps, redis_server.url(4))).park_after == 5.0


def test_sentinel_and_socket_brokers_become_clients_of_the_same_servers(apps):
    """kombu's sentinel:// and redis+socket:// URLs are read as the broker reads them."""
    sentinel = _app(
        apps,
        "sentinel://:pw@s1:26379/3;sentinel://s2:26380/3",
        broker_transport_options={"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}},
    )
    client = broker_client(sentinel, timeout=1)
    assert client is not None
    assert describe(client) == "sentinel service mymaster/3"
    sock = broker_client(_app(apps, "redis+socket:///tmp/r.sock?virtual_host=2"), timeout=1)
    assert sock is not None
    assert describe(sock) == "unix:/tmp/r.sock"
    assert broker_client(_app(apps, "amqp://h//"), timeout=1) is None
    with pytest.raises(ValueError, match="master_name"):
        broker_client(_app(apps, "sentinel://s1:26379"), timeout=1)


# -- the message and its publication ------------------------------------------------------


def _request(task_id: str, queue: str, **headers: Any) -> Context:
    return Context(
        id=task_id,
        args=[],
        kwargs={},
        headers=headers,
        delivery_info={"exchange": "", "routing_key": queue, "priority": 3},
        retries=0,
        root_id=task_id,
        parent_id=None,
        reply_to=None,
    )


def test_the_message_is_what_retry_would_publish_and_refuses_non_json(apps, redis_server):
    """message_for keeps the task ID, headers, queue and priority, with no countdown, as
    kombu JSON, without the header of an earlier release; arguments JSON cannot carry give
    None."""
    app = _app(apps, redis_server.url(4))

    @app.task(bind=True, name="park.probe", shared=False)
    def probe(self: Any, x: Any) -> None: ...

    request = _request("tid-1", "q-probe", trace="abc")
    headers = {"trace": "abc", "x-test": "1", PARKED_HEADER: "an-earlier-release"}
    text = message_for(probe, request, (1,), {"y": [2]}, headers)
    assert text is not None
    data = kombu_json.loads(text)
    assert (data["task"], data["args"], data["kwargs"]) == ("park.probe", [1], {"y": [2]})
    options = data["options"]
    assert options["task_id"] == "tid-1"
    assert options["queue"] == "q-probe"
    assert options["priority"] == 3
    assert options["headers"] == {"trace": "abc", "x-test": "1"}
    assert options.get("countdown") is None
    assert options.get("eta") is None
    assert message_for(probe, request, (object(),), {}, {}) is None


def test_publish_sends_the_message_again_with_the_entry_header(apps, redis_server, prefix):
    """publish() puts the message on its queue, same task ID, with resilience_parked."""
    app = _app(apps, redis_server.url(6), resilience_key_prefix=prefix)
    queue = f"q-{prefix}"
    parked = parking_place(app).parked
    request = _request("tid-2", queue)
    text = message_for(app.tasks["celery.backend_cleanup"], request, (), {}, {"x-test": "2"})
    assert text is not None
    entry = parked.park(
        task_name="celery.backend_cleanup",
        task_id="tid-2",
        reason="schedule",
        delay=0,
        message=text,
    )
    publish(app, entry)
    with redis_server.client(6) as raw:
        # kombu's Redis transport keeps a priority of its own list ("<queue>\x06\x16<n>")
        (key,) = list(raw.scan_iter(match=f"{queue}*"))
        assert key.endswith(b"3")
        body = json.loads(raw.lpop(key))
    assert body["headers"]["id"] == "tid-2"
    assert body["headers"][PARKED_HEADER] == entry.id
    assert body["headers"]["x-test"] == "2"
    assert body["properties"]["priority"] == 3


# -- the releaser -------------------------------------------------------------------------


def test_the_releaser_publishes_due_entries_and_forgets_them(apps, redis_server, prefix):
    """One look of a releaser: the due entries go to their queue and leave the set."""
    app = _app(apps, redis_server.url(6), resilience_key_prefix=prefix)
    queue = f"q-{prefix}"
    parked = parking_place(app).parked
    task = app.tasks["celery.backend_cleanup"]
    for i in range(5):
        text = message_for(task, _request(f"tid-{i}", queue), (), {}, {})
        assert text is not None
        parked.park(
            task_name=task.name, task_id=f"tid-{i}", reason="backoff", delay=0, message=text
        )
    releaser = Releaser(app, batch=3)
    assert releaser.run_once() == 3
    assert releaser.run_once() == 2
    assert releaser.stats.published == 5
    assert parked.summary().count == 0
    with redis_server.client(6) as raw:
        assert sum(raw.llen(key) for key in raw.scan_iter(match=f"{queue}*")) == 5


def test_the_releaser_survives_an_unreachable_store_and_comes_back(apps, tmp_path, prefix):
    """Store down: a look counts the error and raises nothing; back up: it publishes."""
    server = RedisServer(tmp_path / "r").start()
    try:
        app = _app(apps, server.url(0), resilience_key_prefix=prefix, resilience_redis_timeout=0.5)
        releaser = Releaser(app)
        server.kill()
        assert releaser.run_once() == 0
        assert releaser.stats.store_errors == 1
        server.restart()
        parked = parking_place(app).parked
        text = message_for(app.tasks["celery.backend_cleanup"], _request("t", "qq"), (), {}, {})
        assert text is not None
        parked.park(task_name="x", task_id="t", reason="backoff", delay=0, message=text)
        assert wait_until(releaser.run_once, timeout=10, what="a look that publishes") == 1
        assert releaser.stats.last_error is None
    finally:
        server.stop()


def test_a_thread_started_and_stopped_leaves_nothing_behind(apps, redis_server, prefix):
    """The releaser thread starts, looks, and stops within its bound."""
    app = _app(apps, redis_server.url(6), resilience_key_prefix=prefix, resilience_park_poll=0.05)
    releaser = Releaser(app)
    releaser.start()
    wait_until(lambda: releaser.stats.last_look_at, timeout=10, what="a first look")
    releaser.stop(timeout=5)
    assert not releaser.running


def test_next_delay_spreads_looks_and_backs_off():
    """Jitter of +/- 50 % around the poll, none after a full batch, doubling on failures."""
    assert next_delay(1.0, full=False, failures=0, draw=0.0) == 0.5
    assert next_delay(1.0, full=False, failures=0, draw=0.999) == pytest.approx(1.499)
    assert next_delay(1.0, full=True, failures=0, draw=0.3) == 0.0
    assert next_delay(1.0, full=True, failures=3, draw=0.5) == 8.0
    assert next_delay(1.0, full=False, failures=40, draw=0.5) == 30.0


def test_the_parked_gauges_follow_a_summary():
    """set_parked: one gauge per reason (0 for the absent), claimed, and overdue seconds."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - a test extra

    from celery_resilience.observability.metrics import (  # noqa: PLC0415
        disable_metrics,
        enable_metrics,
        set_parked,
    )
    from celery_resilience.state.parked import ParkedSummary  # noqa: PLC0415

    disable_metrics()
    registry = CollectorRegistry()
    enable_metrics(registry=registry)
    try:
        set_parked(
            ParkedSummary(
                count=5,
                by_reason={"backoff": 4, "rate_limited": 1},
                claimed=2,
                oldest_due=100.0,
                now=107.5,
            )
        )
        value = registry.get_sample_value
        assert value("celery_resilience_parked", {"reason": "backoff"}) == 4
        assert value("celery_resilience_parked", {"reason": "rate_limited"}) == 1
        assert value("celery_resilience_parked", {"reason": "breaker_open"}) == 0
        assert value("celery_resilience_parked_claimed") == 2
        assert value("celery_resilience_parked_overdue_seconds") == 7.5
        set_parked(ParkedSummary(count=0, now=200.0))
        assert value("celery_resilience_parked", {"reason": "backoff"}) == 0
        assert value("celery_resilience_parked_overdue_seconds") == 0
    finally:
        disable_metrics()


def test_release_all_reaches_every_entry_while_a_releaser_claims(parked: ParkedSet, redis_server):
    """1,500 entries released at once while a releaser claims the due ones meanwhile
    (which shifts every rank): each entry is released, none skipped."""
    ids = {_park(parked, 600.0).id for _ in range(1500)}
    claimed: set[str] = set()
    stop = threading.Event()

    def releaser() -> None:
        with redis_server.client(3) as own:
            mine = ParkedSet(own, parked.keyspace)
            for _ in range(100_000):  # bounded
                if stop.is_set():
                    return
                claimed.update(e.id for e in mine.claim_due(limit=100, lease=60))

    thread = threading.Thread(target=releaser)
    thread.start()
    try:
        moved = parked.release_now()
        wait_until(lambda: claimed >= ids, timeout=30, what="every entry claimed")
    finally:
        stop.set()
        thread.join(10)
    assert moved == 1500
