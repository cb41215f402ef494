"""How the reliability benchmark judges a task and counts an upstream's effects."""

from __future__ import annotations

from benchmarks.measure import effects
from benchmarks.reliability import judge, search
from example_project.upstream import RequestRecord


def _post(path: str, key: str | None, status: int | None = 200) -> RequestRecord:
    headers = {} if key is None else {"Idempotency-Key": key}
    return RequestRecord(0.0, 0.0, "POST", path, "", headers, "", status, "/")


def test_effects_count_once_per_idempotency_key():
    """Calls under one key are one effect; calls without a key, or not 2xx, are not merged."""
    records = [
        _post("/a", "k1"), _post("/a", "k1"), _post("/a", "k2"),
        _post("/b", None), _post("/b", None),
        _post("/c", "k", 503), _post("/c", "k", None),
    ]  # fmt: skip
    assert effects(records) == {"/a": (2, 3), "/b": (2, 2)}


def test_judge_tells_each_verdict_apart():
    """Completed, refused as expected, lost, duplicated by effect or by success, failed."""
    ok, ref, lost, twice, logged2, bad = (f"{n:08d}-0000-4000-8000-000000000000" for n in range(6))
    states = {ok: "SUCCESS", ref: "FAILURE", lost: "RETRY", twice: "SUCCESS",
              logged2: "SUCCESS", bad: "FAILURE"}  # fmt: skip
    applied = {f"/{ok}": (1, 2), f"/{lost}": (1, 1), f"/{twice}": (2, 2), f"/{logged2}": (1, 1)}
    logs = "\n".join(f"Task x[{t}] succeeded in 0.1s" for t in (ok, twice, logged2, logged2))
    found = judge(
        normal=[ok, lost, twice, logged2, bad],
        refused=[ref],
        states=states,
        paths={task: f"/{task}" for task in states},
        applied=applied,
        logs=logs,
    )
    assert (found["completed"], found["lost"], found["duplicated"], found["failed"]) == (2, 1, 2, 1)
    assert found["repeated"] == 1
    assert found["misses"] == {"lost": [lost], "duplicated": [twice, logged2], "failed": [bad]}


def test_search_counts_the_secret_per_sink():
    assert search("s3cr3t", {"log": "a s3cr3t and s3cr3t", "backend": "***"}) == {"log": 2}
