"""Shared by the inspection tests: one worker per test module, and the CLI as a process.

A module starts its worker once (the start costs seconds) with a key prefix and a queue
of its own; each test keeps apart by upstream paths and task IDs of its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from celery_resilience import CircuitBreaker
from celery_resilience.state.connect import connect
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.redis import RedisStore
from example_project.upstream import Upstream
from tests.helpers import REPO_ROOT
from tests.helpers.celery_apps import app_env, make_app
from tests.helpers.processes import tail
from tests.helpers.redis_server import RedisServer
from tests.helpers.workers import CeleryWorker

APP = "tests.apps.inspect_app"
#: The breaker of ``inspect.outage``: opens after three failures and stays open 30 s.
OUTAGE = CircuitBreaker("inspect-outage", minimum_calls=3, open_for=30.0)
ENV_PREFIX = "RESILIENCE_TEST_PREFIX"
#: A breaker name with a space, non-ASCII and markup (``RESILIENCE_TEST_ODD_NAME=1``
#: declares it): what Flower shows must escape it.
ODD_NAME = "legacy café <b>x</b>"


@dataclass
class Rig:
    """A worker of ``tests.apps.inspect_app`` and what a test needs to talk to it."""

    env: dict[str, str]
    prefix: str
    queue: str
    worker: CeleryWorker
    redis: RedisServer
    clients: list[Celery] = field(default_factory=list)
    app: str = APP

    def client(self) -> Celery:
        """A client app on the worker's broker, backend and queue."""
        app = make_app(
            "client",
            broker=self.env["RESILIENCE_TEST_BROKER"],
            backend=self.env["RESILIENCE_TEST_BACKEND"],
            queue=self.queue,
            set_as_current=False,
        )
        self.clients.append(app)
        return app

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``celery -A tests.apps.inspect_app resilience ARGS`` with the worker's settings."""
        return run_cli(*args, env={**self.env, **(env or {})}, app=self.app)

    @functools.cached_property
    def store(self) -> RedisStore:
        """The worker's state store, seen from the test (closed with the rig)."""
        return RedisStore(connect(self.redis.url(0)), KeySpace(self.prefix))

    def log(self) -> str:
        """The tail of the worker's log (for assertion messages)."""
        return tail(self.worker.logfile, 40)


def run_cli(
    *args: str, env: Mapping[str, str], app: str = APP, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``resilience`` command in a fresh process; return what it printed."""
    python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "resilience", *args],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(python_path)},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def rig_fixture(logdir: str, **options: Any) -> Any:
    """A module-scoped pytest fixture yielding a :func:`worker_rig` (``options`` to it)."""
    import pytest  # noqa: PLC0415 - worker processes import this module, without pytest

    @pytest.fixture(scope="module")
    def rig(
        redis_server: RedisServer,
        upstream_server: Upstream,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[Rig]:
        """One worker for the module, with its own key prefix and queue."""
        logs = tmp_path_factory.mktemp(logdir)
        with worker_rig(redis_server, upstream_server, logs, **options) as found:
            yield found

    return rig


@contextlib.contextmanager
def worker_rig(
    redis: RedisServer,
    upstream: Upstream,
    logdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    concurrency: int = 2,
    app: str = APP,
    broker: str | None = None,
) -> Iterator[Rig]:
    """Start one prefork worker of ``app`` with a fresh prefix and queue, on ``broker``
    (default: the private Redis, db 0); stop it (by PID) at the end."""
    unique = uuid.uuid4().hex[:10]
    queue, prefix = f"q-{unique}", f"t-{unique}"
    env = app_env(
        broker=broker or redis.url(0), backend=redis.url(1), upstream=upstream.url, queue=queue
    )
    env[ENV_PREFIX] = prefix
    env.update(extra_env or {})
    worker = CeleryWorker(
        app,
        f"w-{unique}",
        env=env,
        logfile=logdir / f"w-{unique}.log",
        concurrency=concurrency,
        extra_args=list(extra_args),
    )
    rig = Rig(env=env, prefix=prefix, queue=queue, worker=worker, redis=redis, app=app)
    try:
        worker.start()
        worker.wait_ready()
        yield rig
    finally:
        worker.stop()
        for app in rig.clients:
            app.close()
        if "store" in rig.__dict__:
            rig.store.client.close()
