"""A worker and eager mode make the same decisions: one table of scenarios, both drivers.

The worker side runs :mod:`tests.apps.parity` on a real prefork worker (Redis broker, the
shared state in Redis); the eager side runs the same module with ``task_always_eager`` in
a process of its own (no broker, no Redis: the gates in memory, waits skipped). Each
scenario's upstream script is laid once per side. For each task the two sides must agree
on every signal (name, attempt, verdict / gate / reason), the final state, and the final
exception: its type, its message (secrets redacted, the trace ID aside) and whether it is
chained to the failure behind it. The same holds for a worker whose state store is
unreachable (the per-process fallback).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import redis

from example_project.upstream import Response, Upstream
from tests.helpers.celery_apps import ENV_BACKEND, ENV_UPSTREAM
from tests.helpers.cluster import client_for, module_env
from tests.helpers.parity import outcome
from tests.helpers.processes import free_port

pytestmark = pytest.mark.integration

APP = "tests.apps.parity"
SECRET = "s3cr3t-parity-key"

#: name: (the tasks it runs in order, each as (task, path suffix)), the upstream scripts
#: by path suffix as (answers, then).
SCENARIOS: dict[str, tuple[list[tuple[str, str]], dict[str, tuple[list[Any], Any]]]] = {
    "success": ([("parity.call", "ok")], {"ok": ([], 200)}),
    "transient then success": ([("parity.call", "flaky")], {"flaky": ([503], 200)}),
    "permanent": ([("parity.call", "gone")], {"gone": ([404], 200)}),
    "429 with Retry-After": (
        [("parity.call", "busy")],
        {"busy": ([Response(429, retry_after=1)], 200)},
    ),
    "deadline": (
        [("parity.deadline", "slow")],
        {"slow": ([Response(503, retry_after=30)], 200)},
    ),
    "retries spent": ([("parity.call", "down")], {"down": ([], 503)}),
    "redaction": ([("parity.call", f"secret?api_key={SECRET}")], {"secret": ([403], 200)}),
    "breaker open": (
        [
            ("parity.trip", "brk"),
            ("parity.trip", "brk"),
            ("parity.refused", "brk"),
            ("parity.guarded", "brk"),
        ],
        {"brk": ([503, 503], 200)},
    ),
    "body-raised Retry": ([("parity.self_retry", "again")], {"again": ([503], 200)}),
}


def _script(upstream: Upstream, prefix: str, scripts: dict[str, tuple[list[Any], Any]]) -> None:
    for suffix, (answers, then) in scripts.items():
        upstream.script(f"{prefix}/{suffix}", answers, then=then)


def _normal(entry: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The outcome with what differs by nature taken out: IDs, the trace, the path."""
    message = entry["message"]
    if isinstance(message, str):
        message = message.replace(prefix, "<path>")
        message = re.sub(r"trace [0-9a-f]{32}", "trace <id>", message)
        message = re.sub(r"in \d+\.\d+ s", "in <t> s", message)
    return {**entry, "id": None, "message": message}


def _worker_side(client: Any, env: dict[str, str], plan: list[tuple[str, str]], prefix: str):
    backend = redis.Redis.from_url(env[ENV_BACKEND])
    done = []
    for name, suffix in plan:
        result = client.send_task(name, args=[f"{prefix}/{suffix}"])
        result.get(timeout=60, propagate=False)
        entry = outcome(result.id, result.state, result.result, result.traceback)
        # every signal is sent (and recorded) before the attempt's result is stored
        entry["events"] = [json.loads(e) for e in backend.lrange(f"parity:{result.id}", 0, -1)]
        done.append(entry)
    return done


def _eager_side(upstream: Upstream, plan: list[tuple[str, str]], prefix: str) -> list[Any]:
    env = {"RESILIENCE_PARITY_EAGER": "1", ENV_UPSTREAM: upstream.url, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", "from tests.apps.parity import main; main()"],
        input=json.dumps([[name, f"{prefix}/{suffix}"] for name, suffix in plan]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**_inherited(), **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_TEST")}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_worker_and_eager_decide_alike(scenario, worker, client, env, upstream, unique):
    """Same signals, same final state, same final exception, on a worker and eagerly."""
    plan, scripts = SCENARIOS[scenario]
    tag = re.sub(r"\W+", "-", scenario)
    on_worker, on_eager = f"/{unique}-{tag}-w", f"/{unique}-{tag}-e"
    _script(upstream, on_worker, scripts)
    _script(upstream, on_eager, scripts)

    worker_side = [_normal(e, on_worker) for e in _worker_side(client, env, plan, on_worker)]
    eager_side = [_normal(e, on_eager) for e in _eager_side(upstream, plan, on_eager)]

    assert eager_side == worker_side
    for entry in worker_side:
        assert SECRET not in json.dumps(entry)


@pytest.mark.parametrize("scenario", ["transient then success", "retries spent", "permanent"])
def test_a_worker_on_the_fallback_and_eager_decide_alike(
    scenario, worker_factory, celery_client, redis_server, upstream, unique
):
    """With its state store unreachable (fail-open on per-process state), a worker still
    decides as eager mode does."""
    env = module_env(
        redis_server,
        upstream.url,
        RESILIENCE_TEST_STATE=f"redis://127.0.0.1:{free_port()}/0",
    )
    worker_factory(APP, env=env)
    client = client_for(celery_client, env)
    plan, scripts = SCENARIOS[scenario]
    tag = re.sub(r"\W+", "-", scenario)
    on_worker, on_eager = f"/{unique}-{tag}-fw", f"/{unique}-{tag}-fe"
    _script(upstream, on_worker, scripts)
    _script(upstream, on_eager, scripts)

    worker_side = [_normal(e, on_worker) for e in _worker_side(client, env, plan, on_worker)]
    eager_side = [_normal(e, on_eager) for e in _eager_side(upstream, plan, on_eager)]

    assert eager_side == worker_side
