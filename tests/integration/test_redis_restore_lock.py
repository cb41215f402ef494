"""kombu's ``unacked_mutex``: a Redis broker's node killed while it restores unacknowledged
messages holds back every other node's restores for at most the bound the worker sets
(:func:`celery_resilience.integration.kombu_redis.bound_unacked_mutex`), not kombu's 300 s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
from celery import Celery

from celery_resilience.integration.kombu_redis import UNACKED_MUTEX_CAP, bound_unacked_mutex
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration

#: A node of the same app: takes one message without acknowledging it, enters the restore
#: lock as kombu's sweep does, and is SIGKILLed inside it.
_DYING_NODE = """
import os, signal, sys
from celery import Celery
from kombu.transport.redis import Mutex
from celery_resilience.integration.kombu_redis import bound_unacked_mutex

broker, queue = sys.argv[1], sys.argv[2]
app = Celery("dying", broker=broker, set_as_current=False)
app.conf.broker_transport_options = {"visibility_timeout": 1.0}
bound_unacked_mutex(app)
with app.connection_for_read() as connection:
    channel = connection.default_channel
    assert channel.basic_get(queue, no_ack=False) is not None
    with Mutex(channel.client, channel.unacked_mutex_key, channel.unacked_mutex_expire):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _app(broker: str) -> Celery:
    app = Celery("survivor", broker=broker, set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 1.0}
    return app


def test_the_bound_follows_the_visibility_timeout_and_leaves_a_set_value_alone():
    """At most the cap, the visibility timeout when shorter, never below 1 s; a value the
    user set is kept."""
    for options, returned, kept in [
        ({}, UNACKED_MUTEX_CAP, UNACKED_MUTEX_CAP),
        ({"visibility_timeout": 10}, 10.0, 10.0),
        ({"visibility_timeout": 0.2}, 1.0, 1.0),
        ({"visibility_timeout": 10, "unacked_mutex_expire": 120}, None, 120),
    ]:
        app = Celery("bound", broker="redis://127.0.0.1:1/0", set_as_current=False)
        app.conf.broker_transport_options = dict(options)
        assert bound_unacked_mutex(app) == returned
        assert app.conf.broker_transport_options["unacked_mutex_expire"] == kept
        app.close()


def test_a_node_killed_holding_the_restore_lock_delays_restores_by_the_bound_only(
    redis_server: RedisServer, unique: str
):
    """A node takes a message unacknowledged and is SIGKILLed inside the restore lock. The
    lock it leaves expires after the bound (1 s here, the visibility timeout), and a
    surviving node's sweep then puts the message back in its queue."""
    broker = redis_server.url(7)
    queue = f"q-{unique}"
    app = _app(broker)
    assert bound_unacked_mutex(app) == 1.0
    with app.connection_for_write() as connection, connection.SimpleQueue(queue) as simple:
        simple.put({"kept": True})
    dying = subprocess.run(
        [sys.executable, "-c", _DYING_NODE, broker, queue],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert dying.returncode == -signal.SIGKILL, dying.stderr.decode()

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = channel.client
        assert client.llen(queue) == 0
        assert client.hlen(channel.unacked_key) == 1

        def restored() -> bool:
            channel.qos.restore_visible(num=None, interval=1)
            return bool(client.llen(queue) == 1)

        wait_until(restored, timeout=20, interval=0.2, what="the dead node's message restored")
        assert client.hlen(channel.unacked_key) == 0
    app.close()


def test_a_worker_bounds_the_lock(worker: Any, client: Celery):
    """A worker on a Redis broker runs with the bound in its transport options."""
    replies = client.control.inspect(destination=[worker.nodename], timeout=5).conf()
    assert replies is not None
    (conf,) = replies.values()
    assert conf["broker_transport_options"]["unacked_mutex_expire"] == UNACKED_MUTEX_CAP
