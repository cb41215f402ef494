"""Bounded polling: wait for a condition instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises ``TimeoutError`` (naming ``what``) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not within {timeout:g} s: {what or predicate!r}")
        time.sleep(min(interval, left))
