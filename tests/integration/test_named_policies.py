"""Named policies at run time: changed through the command, followed by every worker.

Tasks come from :mod:`tests.apps.policy_app`: ``payments`` (max_retries=3, quick
backoff), ``pair`` (max_retries=1, deadline=10), and two tasks behind the breaker
``guard`` with ``on_open`` set to a fallback and to "fail".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from celery_resilience.integration.named import REFRESH_EVERY
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.overrides import Overrides
from tests.helpers import REPO_ROOT
from tests.helpers.polling import wait_until

pytestmark = pytest.mark.integration

WORKER_CONCURRENCY = 4
APP = "tests.apps.policy_app"
#: What the command promises: every worker process follows a change within this.
PICKUP = 2 * REFRESH_EVERY


def command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.apps.policy_app resilience ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "resilience", *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_change_reaches_running_workers_and_unset_restores(worker, env, client, upstream, unique):
    """`policy set payments max_retries=1`: tasks begun 2 s later make exactly 2 calls."""
    warm = f"/{unique}/warm"
    upstream.script(warm, [], then=200)
    assert client.send_task("pol.pay", args=[warm]).get(timeout=20) == 200

    done = command(env, "policy", "set", "payments", "max_retries=1")
    assert done.returncode == 0, done.stderr
    assert "version" in done.stdout
    time.sleep(PICKUP)  # the promise under test: followed within this time
    down = f"/{unique}/down-1"
    upstream.script(down, [], then=503)
    with pytest.raises(Exception, match="gave up after 2 attempt"):
        client.send_task("pol.pay", args=[down]).get(timeout=30)
    assert upstream.count(down) == 2

    done = command(env, "policy", "unset", "payments")
    assert done.returncode == 0, done.stderr
    time.sleep(PICKUP)
    down = f"/{unique}/down-2"
    upstream.script(down, [], then=503)
    with pytest.raises(Exception, match="gave up after 4 attempt"):
        client.send_task("pol.pay", args=[down]).get(timeout=30)
    assert upstream.count(down) == 4
    assert "policy 'payments' is now version" in worker.log_text()


def test_no_attempt_sees_half_a_change(worker, env, client, redis_server):
    """Changes of two keys at once racing with 4 processes: each attempt sees one version."""
    stop = threading.Event()
    errors: list[str] = []
    state = redis_server.client(2)
    overrides = Overrides(state, KeySpace(env["RESILIENCE_TEST_PREFIX"]))

    def flip() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            try:
                current = overrides.get("pair")
                overrides.put("pair", {"max_retries": n, "deadline": 10 * n}, current.version)
            except Exception as exc:
                errors.append(repr(exc))
            stop.wait(0.05)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        seen: list[list[float]] = []
        deadline = time.monotonic() + 60
        while len({tuple(s) for s in seen}) < 4 and time.monotonic() < deadline:
            batch = [client.send_task("pol.probe") for _ in range(40)]
            seen.extend(result.get(timeout=30) for result in batch)
    finally:
        stop.set()
        flipper.join(timeout=30)
        overrides.put("pair", {}, overrides.get("pair").version)
        state.close()
    assert not errors
    assert len({tuple(s) for s in seen}) >= 2, "the policy never changed under the probes"
    for max_retries, deadline_s in seen:
        assert deadline_s == 10 * max_retries, (max_retries, deadline_s)


def test_invalid_values_are_refused_and_nothing_changes(env):
    """A bad value through the command: a clear message, exit 1, the stored policy as it was."""
    before = command(env, "policy", "show", "payments", "--json")
    assert before.returncode == 0, before.stderr
    for bad in [
        "max_retries=-2",
        "breaker.failure_rate=3",
        "rate_limit=10/x",
        "nope=1",
        "on_open=explode",
    ]:
        refused = command(env, "policy", "set", "payments", bad)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert "payments" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    after = command(env, "policy", "show", "payments", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_fallback_answers_while_the_breaker_is_open(worker, env, client, upstream, unique):
    """on_open=callable returns its result, on_open='fail' fails at once: no upstream call."""
    path = f"/{unique}/guarded"
    upstream.script(path, [], then=200)
    opened = command(env, "breaker", "open", "guard")
    assert opened.returncode == 0, opened.stderr
    try:
        assert client.send_task("pol.with_fallback", args=[path]).get(timeout=20) == (
            f"cached {path}"
        )
        failing = client.send_task("pol.fail_fast", args=[path])
        with pytest.raises(Exception, match="breaker 'guard' forced open; on_open='fail'"):
            failing.get(timeout=20)
        assert type(failing.result).__name__ == "BreakerOpenError"
        assert upstream.count(path) == 0
    finally:
        assert command(env, "breaker", "reset", "guard").returncode == 0
    wait_until(
        lambda: client.send_task("pol.with_fallback", args=[path]).get(timeout=20) == 200,
        timeout=40,
        interval=0.5,
        what="the fallback task calling the upstream again",
    )
