"""Take the screenshots of docs/inspection.md: Flower's task and worker pages during an outage.

Runs the example project against a private Redis and the flaky upstream: the billing API
answers 503 (its breaker opens, tasks are deferred), the CRM answers 429 with
``Retry-After: 60`` (a rate-limited retry). Needs Debian's Chromium
(``apt-get install chromium``); from the repository root::

    .venv/bin/python docs/screenshots.py

Writes docs/flower-task-retry.png, docs/flower-task-deferred.png, docs/flower-worker.png
and prints ``celery resilience status`` as it was at the time.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from example_project.upstream import Response, Upstream  # noqa: E402
from tests.helpers.chromium import find_chromium, screenshot  # noqa: E402
from tests.helpers.flower import FlowerProcess  # noqa: E402
from tests.helpers.inspection import run_cli  # noqa: E402
from tests.helpers.polling import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402
from tests.helpers.workers import CeleryWorker  # noqa: E402

APP = "example_project.app"


def shoot(url: str, out: Path, size: str, profile: Path) -> None:
    """Render ``url`` in headless Chromium and save a PNG."""
    chromium = find_chromium()
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    screenshot(chromium, url, out=out, size=size, profile=profile)
    print(f"wrote {out.relative_to(ROOT)}")


def task_in(flower: FlowerProcess, name: str, prefix: str) -> Any:
    """A task of ``name`` in RETRY whose exception starts with ``prefix``, if there is one:
    ``(task_id, exception)``."""
    for task_id, task in flower.get("/api/tasks", taskname=name).items():
        exception = task.get("exception") or ""
        if task["state"] == "RETRY" and exception.startswith(prefix):
            return task_id, exception
    return None


def shoot_task(flower: FlowerProcess, name: str, prefix: str, out: Path, profile: Path) -> None:
    """Take the page of a task of ``name`` in RETRY with ``prefix``; again if the task moved
    on meanwhile (its exception is not the one it had before the picture)."""
    for _ in range(5):
        task_id, before = wait_until(
            lambda: task_in(flower, name, prefix), timeout=60, what=f"{name}: {prefix}"
        )
        shoot(f"{flower.url}/task/{task_id}", out, "1280,1900", profile)
        if flower.get(f"/api/task/info/{task_id}").get("exception") == before:
            return
    sys.exit(f"{name} never kept still in {prefix!r} long enough for a picture")


def main() -> None:
    """Run the outage, take the pictures, stop everything."""
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    with RedisServer(work / "redis") as redis, Upstream() as upstream:
        upstream.phases("/billing", [(None, 503)])
        upstream.script("/crm", [Response(429, retry_after=60)], then=200)
        env = {
            "EXAMPLE_BROKER_URL": redis.url(0),
            "EXAMPLE_RESULT_BACKEND": redis.url(1),
            "EXAMPLE_STATE_URL": redis.url(2),
            "EXAMPLE_UPSTREAM_URL": upstream.url,
        }
        os.environ.update(env)
        from example_project.app import app  # noqa: PLC0415 - configured by the environment
        from example_project.tasks import charge_invoice, sync_customer  # noqa: PLC0415

        worker = CeleryWorker(APP, "billing-1", env=env, logfile=work / "worker.log")
        with FlowerProcess(APP, env=env, logfile=work / "flower.log") as flower:
            try:
                worker.start()
                worker.wait_ready(app, timeout=60)
                for n in range(8):
                    charge_invoice.delay(f"INV-{1000 + n}", 4200 + n)
                sync_customer.delay("C-42")
                docs, profile = ROOT / "docs", work / "chromium"
                shoot_task(flower, "example.sync_customer", "rate_limited:",
                           docs / "flower-task-retry.png", profile)
                shoot_task(flower, "example.charge_invoice", "deferred:",
                           docs / "flower-task-deferred.png", profile)
                flower.get("/api/workers", refresh=1)  # the worker's stats as they are now
                shoot(f"{flower.url}/worker/{worker.nodename}#tab-other",
                      docs / "flower-worker.png", "1280,1300", profile)
                status = run_cli("status", env=env, app=APP)
                print(status.stdout or status.stderr)
            finally:
                worker.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
