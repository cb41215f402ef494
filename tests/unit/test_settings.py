"""Where the shared state lives, and what happens when nothing says."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience.core.errors import ResilienceConfigError
from celery_resilience.integration.settings import (
    consumer_timeout_cap,
    read_settings,
    visibility_timeout_cap,
)
from celery_resilience.state.connect import connect


@pytest.fixture
def make() -> Iterator:
    apps: list[Celery] = []

    def build(**conf) -> Celery:
        app = Celery("settings", set_as_current=False)
        app.conf.update(**conf)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


def test_explicit_backend_url_wins(make):
    """resilience_backend_url is used as given."""
    app = make(broker_url="redis://b:6379/0", resilience_backend_url="rediss://u:pw@s:6380/2")
    assert read_settings(app).backend_url == "rediss://u:pw@s:6380/2"


def test_broker_url_when_it_is_redis(make):
    """Without the setting, a Redis broker holds the state (the first of a failover list)."""
    app = make(broker_url="redis://b:6379/0;redis://c:6379/0", result_backend="rpc://")
    assert read_settings(app).backend_url == "redis://b:6379/0"


def test_result_backend_when_the_broker_is_not_redis(make):
    """With an amqp broker, a Redis result backend holds the state."""
    app = make(broker_url="amqp://guest:guest@h//", result_backend="redis://r:6379/3")
    assert read_settings(app).backend_url == "redis://r:6379/3"


def test_no_redis_anywhere_is_a_clear_error_without_passwords(make):
    """Neither is Redis: one clear error, which never shows a password."""
    app = make(broker_url="amqp://guest:hunter2@h//", result_backend="rpc://")
    with pytest.raises(ResilienceConfigError, match="resilience_backend_url") as info:
        read_settings(app)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"resilience_fallback": "maybe"}, "resilience_fallback"),
        ({"resilience_key_prefix": "a b{c}"}, "resilience_key_prefix"),
        ({"resilience_attempt_lease": 0}, "resilience_attempt_lease"),
        ({"resilience_dead_letters_max": 0}, "resilience_dead_letters_max"),
        ({"resilience_grants_ahead": -1}, "resilience_grants_ahead"),
        ({"resilience_grants_ahead": 1001}, "resilience_grants_ahead"),
        ({"resilience_grants_ahead": 2.5}, "resilience_grants_ahead"),
        ({"resilience_grants_ahead": True}, "resilience_grants_ahead"),
        ({"resilience_backend_url": "memcached://x"}, "Redis URL"),
        ({"resilience_consumer_timeout": 0}, "resilience_consumer_timeout"),
        ({"resilience_consumer_timeout": -5}, "resilience_consumer_timeout"),
        ({"resilience_consumer_timeout": "1800"}, "resilience_consumer_timeout"),
        ({"resilience_consumer_timeout": True}, "resilience_consumer_timeout"),
        ({"resilience_consumer_timeout": math.nan}, "resilience_consumer_timeout"),
        ({"resilience_consumer_timeout": math.inf}, "resilience_consumer_timeout"),
        ({"resilience_publish_retry_policy": {"retries": 3}}, "resilience_publish_retry"),
        ({"resilience_publish_retry_policy": {"max_retries": 1.5}}, "max_retries"),
        ({"resilience_publish_retry_policy": {"interval_max": -1}}, "interval_max"),
        ({"resilience_deadline_header": "X Timeout"}, "resilience_deadline_header"),
        ({"resilience_deadline_header": "Authorization"}, "resilience_deadline_header"),
    ],
)
def test_bad_settings_are_named(make, conf, words):
    """A setting that cannot work is named in the error."""
    app = make(broker_url="redis://b:6379/0", **conf)
    with pytest.raises(ResilienceConfigError, match=words):
        read_settings(app)


def test_grants_ahead_is_read(make):
    """resilience_grants_ahead: 32 by default; 0 turns grants ahead off."""
    assert read_settings(make(broker_url="redis://b:6379/0")).grants_ahead == 32
    app = make(broker_url="redis://b:6379/0", resilience_grants_ahead=0)
    assert read_settings(app).grants_ahead == 0


def test_deadline_header_is_read(make):
    """resilience_deadline_header: None by default, else the name given."""
    assert read_settings(make(broker_url="redis://b:6379/0")).deadline_header is None
    app = make(broker_url="redis://b:6379/0", resilience_deadline_header="Request-Timeout")
    assert read_settings(app).deadline_header == "Request-Timeout"


def test_visibility_timeout_caps_countdowns(make):
    """With the Redis broker, countdowns stay below its visibility timeout."""
    app = make(broker_url="redis://b:6379/0", broker_transport_options={"visibility_timeout": 10})
    settings = read_settings(app)
    assert settings.visibility_timeout == 10
    assert settings.countdown_cap is not None
    assert 0 < settings.countdown_cap < 10
    assert settings.consumer_timeout is None


@pytest.mark.parametrize("scheme", ["amqp", "amqps", "pyamqp"])
def test_consumer_timeout_caps_countdowns_on_amqp(make, scheme):
    """With RabbitMQ, countdowns stay below its consumer_timeout (default 30 minutes) by
    more than one of its once-a-minute checks."""
    app = make(broker_url=f"{scheme}://h//", resilience_backend_url="redis://s/0")
    settings = read_settings(app)
    assert settings.consumer_timeout == 1800
    assert settings.visibility_timeout is None
    assert settings.countdown_cap is not None
    assert settings.countdown_cap <= 1800 - 60


def test_consumer_timeout_setting_is_honoured(make):
    """resilience_consumer_timeout sets the cap; a few seconds (as in tests) still leaves
    half of it as margin."""
    app = make(
        broker_url="amqp://h//", resilience_backend_url="redis://s/0", resilience_consumer_timeout=5
    )
    settings = read_settings(app)
    assert settings.consumer_timeout == 5
    assert settings.countdown_cap == 2.5


def test_consumer_timeout_follows_the_consuming_broker(make):
    """The cap follows the broker the worker consumes from: Celery's default (RabbitMQ)
    when no broker is set, the read URL when there is one; a Redis broker has none."""
    unset = make(resilience_backend_url="redis://s/0")
    assert read_settings(unset).consumer_timeout == 1800
    split = make(
        broker_url="redis://b:6379/0",
        broker_read_url="amqp://h//",
        broker_transport_options={"visibility_timeout": 7200},
    )
    settings = read_settings(split)
    assert settings.consumer_timeout == 1800
    assert settings.countdown_cap == consumer_timeout_cap(1800)
    redis_only = make(broker_url="redis://b:6379/0", resilience_consumer_timeout=5)
    assert read_settings(redis_only).consumer_timeout is None


def test_the_smaller_cap_wins(make):
    """Both timeouts known (a Redis broker written, RabbitMQ read): each countdown stays
    below both."""
    app = make(
        broker_url="redis://b:6379/0",
        broker_read_url="amqp://h//",
        broker_transport_options={"visibility_timeout": 10},
        resilience_consumer_timeout=60,
    )
    settings = read_settings(app)
    assert settings.countdown_cap == min(visibility_timeout_cap(10), consumer_timeout_cap(60))


timeouts = st.floats(min_value=0.001, max_value=1e7, allow_nan=False, allow_infinity=False)


@given(timeouts)
def test_every_countdown_stays_below_the_consumer_timeout(timeout):
    """Below the timeout by five minutes, or by half of it when that is less, never
    shorter than half of it (a long wait still moves on)."""
    cap = consumer_timeout_cap(timeout)
    assert timeout / 2 <= cap < timeout
    assert timeout - cap >= min(300.0, timeout / 2) * (1 - 1e-12)


@given(timeouts)
def test_every_countdown_stays_below_the_visibility_timeout(timeout):
    """Below the visibility timeout by a minute, or a fifth of it when less, never
    shorter than half of it."""
    cap = visibility_timeout_cap(timeout)
    assert timeout / 2 <= cap < timeout
    assert timeout - cap >= min(60.0, timeout / 5) * (1 - 1e-12)


def test_worker_refuses_to_start_without_a_state_store(tmp_path):
    """A worker whose resilient tasks have no Redis stops at once with one clear line."""
    (tmp_path / "badapp.py").write_text(
        "from celery import Celery\n"
        "from celery_resilience import resilient_task\n"
        "app = Celery('bad', broker='memory://', backend='rpc://')\n"
        "@resilient_task(app=app, name='bad.t')\n"
        "def t():\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "badapp", "worker", "-P", "solo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "resilience_backend_url" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_tls_options_follow_the_url_they_come_from(make):
    """A rediss:// result backend lends the state store its redis_backend_use_ssl options,
    and Celery's ssl_cert_reqs=CERT_REQUIRED spelling is understood."""
    app = make(
        broker_url="amqp://h//",
        result_backend="rediss://r:6380/3?ssl_cert_reqs=CERT_REQUIRED",
        redis_backend_use_ssl={"ssl_ca_certs": "/etc/ca.pem"},
    )
    settings = read_settings(app)
    assert settings.ssl == {"ssl_ca_certs": "/etc/ca.pem"}
    client = connect(settings.backend_url, ssl=settings.ssl)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == ("required", "/etc/ca.pem")
    client.close()


def test_the_publish_retry_policy_is_kombus(make):
    """resilience_publish_retry_policy takes kombu's keys; the ones not given keep their
    defaults (about 10 s of offers in all)."""
    app = make(
        broker_url="redis://b:6379/0",
        resilience_publish_retry_policy={"max_retries": 2, "interval_max": 1},
    )
    policy = read_settings(app).publish_retry
    assert (policy.max_retries, policy.interval_start, policy.interval_step) == (2, 0.5, 1.0)
    assert policy.interval_max == 1.0
