"""The request a benchmark's no-op runs under, as a worker's pool process receives it.

Imports nothing of the library's, so that plain Celery's side can use it in a process
that declares no resilient task.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["pool_request"]


def pool_request(task_id: uuid.UUID) -> dict[str, Any]:
    """The request fields of a message for task ``task_id`` with no arguments: as
    published by a process that declares the task, it carries a trace context.

    >>> pool_request(uuid.UUID(int=1))["headers"]["traceparent"][:20]
    '00-00000000000000000'
    """
    return {
        "id": str(task_id),
        "headers": {"traceparent": f"00-{task_id.hex}-{task_id.hex[:16]}-01"},
        "delivery_info": {"routing_key": "bench"},
        "hostname": "bench@localhost",
        "retries": 0,
        "timelimit": (None, None),
    }
