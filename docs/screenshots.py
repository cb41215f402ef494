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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from example_project.upstream import Response, Upstream  # noqa: E402
from tests.helpers.flower import FlowerProcess  # noqa: E402
from tests.helpers.inspection import run_cli  # noqa: E402
from tests.helpers.polling import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402
from tests.helpers.workers import CeleryWorker  # noqa: E402

APP = "example_project.app"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-prefers-reduced-motion", "--virtual-time-budget=5000",
]


def screenshot(url: str, out: Path, size: str, profile: Path) -> None:
    """Render ``url`` in headless Chromium and save a PNG."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    subprocess.run(  # noqa: S603 - Chromium, with our own flags and a local URL
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=60,
    )
    print(f"wrote {out.relative_to(ROOT)}")


def task_in(flower: FlowerProcess, name: str, prefix: str) -> Any:
    """A task of ``name`` in RETRY whose exception starts with ``prefix``, if there is one."""
    for task_id, task in flower.get("/api/tasks", taskname=name).items():
        if task["state"] == "RETRY" and (task.get("exception") or "").startswith(prefix):
            return task_id
    return None


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
                retried = wait_until(
                    lambda: task_in(flower, "example.sync_customer", "rate_limited:"),
                    timeout=60, what="a rate-limited retry",
                )
                deferred = wait_until(
                    lambda: task_in(flower, "example.charge_invoice", "deferred:"),
                    timeout=60, what="a deferred charge",
                )
                time.sleep(1.0)  # let Flower's inspector refresh the worker's stats
                flower.get("/api/workers", refresh=1)
                docs = ROOT / "docs"
                screenshot(f"{flower.url}/task/{retried}", docs / "flower-task-retry.png",
                           "1280,1900", work / "chromium")
                screenshot(f"{flower.url}/task/{deferred}", docs / "flower-task-deferred.png",
                           "1280,1900", work / "chromium")
                screenshot(f"{flower.url}/worker/{worker.nodename}#tab-other",
                           docs / "flower-worker.png", "1280,560", work / "chromium")
                status = run_cli("status", env=env, app=APP)
                print(status.stdout or status.stderr)
            finally:
                worker.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
