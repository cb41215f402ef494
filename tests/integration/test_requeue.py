"""Dead-letter requeue on real brokers: the original exchange and routing key (a topic route),
unknown task names refused, the letter deleted only after the broker took the message,
bulk requeue by task name or reason, with a dry run."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace

import kombu
import pytest

from celery_resilience.state.deadletters import DeadLetter, DeadLetters
from celery_resilience.state.keys import KeySpace
from example_project.upstream import Upstream
from tests.helpers.brokers import AMQP_URL, BROKER_KINDS, require_rabbitmq
from tests.helpers.inspection import Rig, worker_rig
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration

APP = "tests.apps.leaks_app"
ROUTING_KEY = "orders.eu.charge"


@pytest.fixture(scope="module", params=BROKER_KINDS)
def rig(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    upstream_server: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    """A worker consuming its queue and a queue bound to a topic exchange by ``orders.#``."""
    broker = require_rabbitmq() if request.param == "amqp" else None
    logs = tmp_path_factory.mktemp(f"requeue-{request.param}")
    topic = f"ex-{logs.name[-12:]}-{request.param}"
    extra = {"RESILIENCE_TEST_TOPIC": topic, "RESILIENCE_TEST_STATE": redis_server.url(0)}
    with worker_rig(
        redis_server, upstream_server, logs, app=APP, broker=broker, extra_env=extra
    ) as found:
        found.env["RESILIENCE_TEST_TOPIC"] = topic
        yield found
        if broker is not None:
            with kombu.Connection(AMQP_URL, connect_timeout=5) as connection:
                channel = connection.default_channel
                for name in (found.queue, f"{found.queue}-topic"):
                    channel.queue_delete(name)
                kombu.Exchange(topic, "topic")(channel).delete()
                kombu.Exchange(found.queue, "direct")(channel).delete()


@pytest.fixture
def letters(rig: Rig) -> Iterator[DeadLetters]:
    """The module's dead-letter stream, emptied after each test."""
    stream = DeadLetters(rig.store.client, KeySpace(rig.prefix))
    yield stream
    stream.purge()


def _topic(rig: Rig) -> str:
    return rig.env["RESILIENCE_TEST_TOPIC"]


def _letter_of(rig: Rig, upstream: Upstream, letters: DeadLetters, path: str) -> DeadLetter:
    """Send ``leak.order`` by the topic route to a path answering 404: its dead letter."""
    upstream.script(path, [404], then=200)
    client = rig.client()
    topic = kombu.Exchange(_topic(rig), "topic", durable=False)  # as the worker has it
    first = client.send_task(
        "leak.order", args=[path], exchange=topic, routing_key=ROUTING_KEY, declare=[topic]
    )
    with pytest.raises(Exception):  # noqa: B017 - permanent: the letter says so
        first.get(timeout=30)
    return wait_until(
        lambda: next((x for x in letters.list() if x.task_id == first.id), None),
        timeout=15,
        what="the dead letter",
    )


def test_requeue_goes_back_by_the_topic_route_it_came_by(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """The letter keeps exchange and routing key; requeue publishes there (not to a queue
    named after the routing key), the task runs again, and only then the letter goes."""
    letter = _letter_of(rig, upstream, letters, f"/{unique}")
    assert (letter.exchange, letter.routing_key) == (_topic(rig), ROUTING_KEY)

    dry = rig.cli("dead-letters", "requeue", "--task", "leak.order", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (
        f"{letter.id} leak.order [{letter.task_id}]: would requeue to exchange "
        f"'{_topic(rig)}' routing key '{ROUTING_KEY}'"
    )
    assert letters.get(letter.id) is not None  # a dry run changes nothing

    result = rig.cli("dead-letters", "requeue", letter.id)
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert rig.client().AsyncResult(new_id).get(timeout=30)["status"] == 200
    assert letters.get(letter.id) is None


def test_unknown_task_names_and_unroutable_letters_are_refused_and_kept(
    rig: Rig, letters: DeadLetters, upstream: Upstream, unique: str
):
    """A task name the app does not register, or a route no queue is bound to: refused,
    exit 1, the letter kept (the broker got nothing)."""
    letter = _letter_of(rig, upstream, letters, f"/{unique}")
    unknown = letters.add(replace(letter, task_name="leak.no_such_task", id=""))
    nowhere = letters.add(replace(letter, routing_key="nobody.binds.this", id=""))
    for entry, why in (
        (unknown, "no task of this app is called so"),
        (nowhere, "the broker has no "),
    ):
        result = rig.cli("dead-letters", "requeue", entry)
        assert result.returncode == 1, result.stdout
        assert f"Error: dead letter {entry} not requeued: {why}" in result.stderr
        assert letters.get(entry) is not None
    dry = rig.cli("dead-letters", "requeue", unknown, "--dry-run")
    assert "refused: no task of this app is called so" in dry.stdout


def test_bulk_requeue_by_reason_sends_each_match_once(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """``--reason permanent`` picks the permanent failures only; each goes once, and the
    letters that did not match stay."""
    first = _letter_of(rig, upstream, letters, f"/{unique}/a")
    second = _letter_of(rig, upstream, letters, f"/{unique}/b")
    other = letters.add(replace(first, verdict="transient", reason="retries exhausted", id=""))

    result = rig.cli("dead-letters", "requeue", "--reason", "permanent")
    assert result.returncode == 0, result.stderr
    new_ids = result.stdout.split()
    assert len(new_ids) == 2
    assert "requeued 2 of 2; 0 refused and kept" in result.stderr
    client = rig.client()
    assert [client.AsyncResult(x).get(timeout=30)["status"] for x in new_ids] == [200, 200]
    assert [x.id for x in letters.list()] == [other]
    assert upstream.count(f"/{unique}/a") == upstream.count(f"/{unique}/b") == 2
    assert {first.id, second.id}.isdisjoint(x.id for x in letters.list())


def test_ids_and_filters_do_not_mix(rig: Rig):
    """IDs with --task, or nothing at all: a usage error, exit 2."""
    both = rig.cli("dead-letters", "requeue", "1-0", "--task", "x")
    assert (both.returncode, both.stderr.strip()) == (
        2,
        "Error: give letter IDs or --task/--reason, not both",
    )
    assert rig.cli("dead-letters", "requeue").returncode == 2


def test_the_json_view_shows_the_route(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """``show --json`` carries exchange and routing key."""
    letter = _letter_of(rig, upstream, letters, f"/{unique}")
    shown = json.loads(rig.cli("dead-letters", "show", letter.id, "--json").stdout)
    assert (shown["exchange"], shown["routing_key"]) == (_topic(rig), ROUTING_KEY)


def test_an_unreachable_broker_keeps_the_letter(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """No broker: exit 69, one line, the letter kept."""
    letter = _letter_of(rig, upstream, letters, f"/{unique}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = rig.env["RESILIENCE_TEST_BROKER"]
    scheme = broker.split("://", 1)[0]
    dead = (
        f"{scheme}://guest:guest@127.0.0.1:{port}//"
        if scheme == "amqp"
        else (f"redis://127.0.0.1:{port}/0")
    )
    result = rig.cli("dead-letters", "requeue", letter.id, env={"RESILIENCE_TEST_BROKER": dead})
    assert result.returncode == 69, result.stderr
    assert f"broker unreachable; dead letter {letter.id} kept" in result.stderr
    assert "Traceback" not in result.stderr
    assert letters.get(letter.id) is not None
