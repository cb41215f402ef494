"""Importing the package connects nothing; declaring a resilient task connects its handlers."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
from celery import Celery, signals

watched = [signals.before_task_publish, signals.worker_init,
           signals.after_setup_logger, signals.after_setup_task_logger]
per_task = [signals.task_prerun, signals.task_postrun, signals.task_success,
            signals.task_failure, signals.task_retry]
def count():
    return [len(s.receivers) for s in watched]
def count_per_task():
    return [len(s.receivers) for s in per_task]

before, before_per_task = count(), count_per_task()
import celery_resilience
imported = count()
app = Celery("wiring", broker="memory://", set_as_current=False)
celery_resilience.resilient_task(app=app, name="wiring.t")(lambda: None)
declared = count()
print(json.dumps({"before": before, "imported": imported, "declared": declared,
                  "per_task": [before_per_task, count_per_task()]}))
"""


def test_import_has_no_side_effects_and_declaring_wires():
    """No Celery signal gains a receiver at import; each of ours is connected once a
    resilient task is declared."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["imported"] == counts["before"]
    assert all(d > b for d, b in zip(counts["declared"], counts["before"], strict=True))
    # Celery sends these around every task the worker runs, resilient or not: none of
    # them has a receiver of the library's to dispatch to
    assert counts["per_task"][1] == counts["per_task"][0]
