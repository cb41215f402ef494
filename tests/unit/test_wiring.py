"""Importing the package connects nothing; declaring a resilient task connects its handlers."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
from celery import Celery, signals

watched = [signals.before_task_publish, signals.worker_init, signals.task_postrun,
           signals.after_setup_logger, signals.after_setup_task_logger]
def count():
    return [len(s.receivers) for s in watched]

before = count()
import celery_resilience
imported = count()
app = Celery("wiring", broker="memory://", set_as_current=False)
celery_resilience.resilient_task(app=app, name="wiring.t")(lambda: None)
declared = count()
print(json.dumps({"before": before, "imported": imported, "declared": declared}))
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
