"""A broker that refuses a retry's or a deferral's message: the task is never lost.

The broker is a private Redis whose worker user may consume but, at the test's word,
not publish (``ACL SETUSER broker -lpush``: kombu's Redis transport publishes with LPUSH
and consumes with BRPOP); clients publish as the default user. The result backend and the
state store stay reachable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_resilience import GaveUp
from celery_resilience.state.deadletters import DeadLetters
from celery_resilience.state.keys import KeySpace
from example_project.upstream import Response
from tests.helpers.celery_apps import ENV_BACKEND, ENV_BROKER, ENV_QUEUE
from tests.helpers.cluster import module_env
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import HOST, RedisServer
from tests.helpers.workers import CeleryWorker

pytestmark = pytest.mark.integration

APP = "tests.apps.faults"
USER, PASSWORD = "broker", "broker-secret"


class Broker:
    """The private broker, and the switch of its worker user's right to publish."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.admin = server.client()
        self.admin.execute_command(
            "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"
        )

    @property
    def worker_url(self) -> str:
        return f"redis://{USER}:{PASSWORD}@{HOST}:{self.server.port}/0"

    def refuse_publishing(self) -> None:
        self.admin.execute_command("ACL", "SETUSER", USER, "-lpush")

    def allow_publishing(self) -> None:
        self.admin.execute_command("ACL", "SETUSER", USER, "+lpush")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with RedisServer(tmp_path / "broker") as server:
        own = Broker(server)
        yield own
        own.admin.close()


@pytest.fixture
def start(broker, worker_factory, celery_client, redis_server, upstream):
    """Start a worker on the broker (``extra`` environment variables added); return it,
    a client app that publishes as the default user, and the dead letters' prefix."""

    def run(**extra: str) -> tuple[CeleryWorker, Celery, str]:
        env = module_env(redis_server, upstream.url, **{ENV_BROKER: broker.worker_url, **extra})
        worker = worker_factory(APP, env=env)
        client = celery_client(broker.server.url(0), env[ENV_BACKEND], env[ENV_QUEUE])
        return worker, client, env["RESILIENCE_TEST_PREFIX"]

    return run


def _letters(redis_server: RedisServer, prefix: str, task_id: str) -> list[str]:
    client: redis.Redis = redis_server.client(2)
    try:
        letters = DeadLetters(client, KeySpace(prefix), 100)
        return [letter.reason for letter in letters.list(100) if letter.task_id == task_id]
    finally:
        client.close()


def test_a_retry_refused_for_a_moment_is_published_again(start, broker, upstream, unique):
    """The broker refuses the retry's message for a moment: the worker says so (with the
    trace ID) and offers it again; the task then succeeds on its second attempt."""
    worker, client, _ = start()
    path = f"/{unique}/flaky"
    upstream.script(path, [503], then=200)
    broker.refuse_publishing()
    try:
        result = client.send_task("res.call", args=[path])
        refused = wait_until(
            lambda: [ln for ln in worker.log_text().splitlines() if "refused the retry" in ln],
            timeout=30,
            what="the refusal logged",
        )
    finally:
        broker.allow_publishing()
    assert result.get(timeout=30)["status"] == 200
    assert upstream.count(path) == 2
    assert "NoPermissionError" in refused[0]
    trace = re.search(r"trace_id=([0-9a-f]{32})", refused[0])
    assert trace is not None, refused[0]
    (success,) = [ln for ln in worker.log_text().splitlines() if "attempt 2 succeeded" in ln]
    assert f"trace_id={trace[1]}" in success


@pytest.mark.parametrize("acks_late", ["0", "1"])
def test_a_retry_refused_for_good_ends_in_failure_and_a_dead_letter(
    start, broker, upstream, unique, redis_server, acks_late
):
    """The broker refuses the retry's message past the publish retry policy: the task
    fails for good (its ledger says why) and leaves a dead letter, whether its message was
    acknowledged at the start or late (kombu's Redis transport would push a rejected
    message back with the very command that is refused, and drop it)."""
    worker, client, prefix = start(RESILIENCE_TEST_ACKS_LATE=acks_late)
    path = f"/{unique}/down"
    upstream.script(path, [], then=503)
    broker.refuse_publishing()
    try:
        result = client.send_task("res.call", args=[path])
        with pytest.raises(GaveUp, match=r"retry could not be published \(OperationalError: NoPe"):
            result.get(timeout=60)
    finally:
        broker.allow_publishing()
    assert upstream.count(path) == 1
    letters = _letters(redis_server, prefix, result.id)
    assert letters == ["its retry could not be published (OperationalError: NoPermissionError)"]
    assert "refused the retry 6 times" in worker.log_text()


def test_an_acks_late_retry_refused_by_a_stopped_rabbitmq_is_requeued_by_the_broker(
    rabbitmq_node, worker_factory, celery_client, redis_server, upstream, unique
):
    """RabbitMQ goes away while an acks_late attempt is failing, for longer than the
    publish retry policy: the attempt rejects its message back; RabbitMQ puts it back by
    itself (it was never acknowledged), and when the broker returns its copy publishes the
    retry that was lost. The task succeeds on attempt 2, which runs once."""
    env = module_env(
        redis_server,
        upstream.url,
        **{ENV_BROKER: rabbitmq_node.url, "RESILIENCE_TEST_ACKS_LATE": "1"},
    )
    worker = worker_factory(APP, env=env)
    client = celery_client(rabbitmq_node.url, env[ENV_BACKEND], env[ENV_QUEUE])
    path = f"/{unique}/away"
    upstream.script(path, [Response(status=503, delay=10.0)], then=200)
    result = client.send_task("res.call", args=[path])
    wait_until(lambda: upstream.count(path) == 1, timeout=30, what="attempt 1 calling")
    rabbitmq_node.pause()
    wait_until(
        lambda: "refused the retry 6 times" in worker.log_text(),
        timeout=60,
        what="the publish retries spent",
    )
    rabbitmq_node.restart()
    assert result.get(timeout=120)["status"] == 200
    assert upstream.count(path) == 2
    assert worker.log_text().count("attempt 2 succeeded") == 1
