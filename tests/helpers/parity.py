"""What the parity test compares of one finished task, on either side."""

from __future__ import annotations

from typing import Any


def outcome(task_id: str, state: str, result: Any, traceback: str | None) -> dict[str, Any]:
    """What the parity test compares of one finished task (besides its events)."""
    failed = isinstance(result, BaseException)
    return {
        "id": task_id,
        "state": state,
        "type": type(result).__name__ if failed else None,
        "message": str(result) if failed else result,
        "chained": bool(traceback)
        and ("direct cause" in traceback or "During handling" in traceback),
    }
