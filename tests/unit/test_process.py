"""This process's ID and its random IDs: right after a fork, and apart from ``random``."""

from __future__ import annotations

import os
import random

import pytest

from celery_resilience.core import process
from celery_resilience.observability.tracing import new_span_id, new_trace


def _in_child(read: int, write: int) -> None:
    """Write the child's view (its ID as the module and the OS see it, two draws)."""
    os.close(read)
    line = f"{process.pid()} {os.getpid()} {process.random_bits(64)} {process.random_bits(64)}"
    os.write(write, line.encode())
    os.close(write)
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_has_its_own_id_and_its_own_random_ids():
    """A child knows its own ID at once, and its draws are not its parent's next draws."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        _in_child(read, write)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen_pid, real_pid, first, second = (int(v) for v in pipe.read().split())
    os.waitpid(child, 0)
    assert seen_pid == real_pid == child != process.pid()
    assert process.pid() == os.getpid()
    parent = {process.random_bits(64), process.random_bits(64)}
    assert not parent & {first, second}


def test_seeding_random_does_not_repeat_trace_ids():
    """A task that seeds the ``random`` module gets fresh trace and span IDs all the same."""
    random.seed(7)
    first = (new_trace().trace_id, new_span_id())
    random.seed(7)
    second = (new_trace().trace_id, new_span_id())
    assert first[0] != second[0]
    assert first[1] != second[1]
