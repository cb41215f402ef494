"""The reliability table's claims, kept by CI: its two cheapest rows, with few tasks.

Each row runs as the benchmark runs it (``benchmarks/reliability.py``): fresh private
servers, two worker nodes of two prefork processes, the fault injected, every task judged
from the result backend, the workers' logs and the upstream's effects per
``Idempotency-Key``, and every sink searched for the planted secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults import FAULTS
from benchmarks.reliability import run_fault
from example_project.upstream import Upstream

pytestmark = pytest.mark.integration

CHEAPEST = ("state_kill", "outage")


@pytest.mark.parametrize("key", CHEAPEST)
def test_a_fault_loses_duplicates_and_leaks_nothing(
    key: str, upstream: Upstream, tmp_path: Path
) -> None:
    fault = next(f for f in FAULTS if f.key == key)
    found = run_fault(fault, upstream, tmp_path, tasks=8, refused=2)

    assert found["planted"], "the upstream never saw the secret: the leak search means nothing"
    assert found["injected"] >= 1
    assert (found["lost"], found["duplicated"], found["leaked"]) == (0, 0, 0), found
    assert found["failed"] == 0, found
    assert found["completed"] == found["sent"] == 10
