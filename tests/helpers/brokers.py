"""The broker matrix: Redis always, RabbitMQ when it answers (or when required).

RabbitMQ on 127.0.0.1:5672 is shared with other users, so every amqp test uses a queue
of its own and deletes it (and its exchange) at the end, and no test restarts it or
changes its configuration: those start a private node (:mod:`tests.helpers.rabbitmq`).
"""

from __future__ import annotations

import functools
import os
from typing import NoReturn

import amqp.exceptions
import kombu
import kombu.exceptions
import pytest

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
BROKER_KINDS = ("redis", "amqp")
REQUIRE_RABBITMQ = "REQUIRE_RABBITMQ"


@functools.cache
def rabbitmq_reachable(url: str = AMQP_URL, timeout: float = 2.0) -> bool:
    """Whether RabbitMQ accepts a connection at ``url`` within about ``timeout`` seconds."""
    with kombu.Connection(url, connect_timeout=timeout) as connection:
        try:
            connection.ensure_connection(max_retries=0)  # one attempt, bounded by timeout
        except (OSError, kombu.exceptions.OperationalError, amqp.exceptions.AMQPError):
            return False
        return bool(connection.connected)


def unavailable(message: str) -> NoReturn:
    """RabbitMQ cannot be had (``message`` says why): skip, or fail when REQUIRE_RABBITMQ=1."""
    if os.environ.get(REQUIRE_RABBITMQ) == "1":
        pytest.fail(f"{message}, and {REQUIRE_RABBITMQ}=1")
    pytest.skip(message)


def require_rabbitmq(url: str = AMQP_URL) -> str:
    """Return ``url`` if RabbitMQ answers; else skip, or fail when REQUIRE_RABBITMQ=1."""
    if not rabbitmq_reachable(url):
        unavailable(f"RabbitMQ does not answer at {url}")
    return url


def is_amqp(url: str) -> bool:
    """Whether ``url`` names an AMQP broker."""
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def delete_amqp_queue(url: str, name: str) -> None:
    """Delete queue ``name`` and the exchange of the same name (Celery's default routing)."""
    exchange = kombu.Exchange(name, "direct")
    with kombu.Connection(url, connect_timeout=5) as connection:
        channel = connection.default_channel
        kombu.Queue(name, exchange, routing_key=name)(channel).delete()
        exchange(channel).delete()
