"""The test rig: private Redis servers and RabbitMQ nodes, Celery worker processes, the
broker matrix.

Modules here must stay importable by worker processes (no pytest import at module level
except in ``brokers`` and ``rabbitmq``, which only the test process uses).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (on ``PYTHONPATH`` of every worker process)."""
