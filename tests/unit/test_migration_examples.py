"""The "after" examples of docs/migration.md are written against the real API.

Each example runs in a fresh Python (its ``Celery(...)`` would otherwise become this
process's current app): its imports must exist, its tasks must be declared (every option
is checked then), and every keyword it gives ``resilient_task`` must be one a task has.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from celery_resilience import ResilientTask
from tests.helpers import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "migration.md"
FENCE = re.compile(r'^```python title="(?P<title>[^"]*)"\n(?P<code>.*?)^```$', re.M | re.S)
AFTER = [m["code"] for m in FENCE.finditer(PAGE.read_text()) if m["title"].startswith("After")]

#: Runs every example in one fresh interpreter; prints, per example, its resilient tasks.
RUNNER = """
import json, sys
from celery_resilience import ResilientTask
declared = []
for number, code in enumerate(json.load(sys.stdin), 1):
    namespace = {"__name__": f"migration_example_{number}"}
    exec(compile(code, f"docs/migration.md, after-example {number}", "exec"), namespace)
    declared.append(sorted(n for n, v in namespace.items() if isinstance(v, ResilientTask)))
print(json.dumps(declared))
"""


def test_the_page_has_after_examples():
    """One for each of autoretry_for, tenacity and pybreaker, at least."""
    assert len(AFTER) >= 3


def test_every_after_example_runs_and_declares_a_resilient_task():
    """Imports, declarations and option checks all pass, and each declares a task."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", RUNNER],
        input=json.dumps(AFTER),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    declared = json.loads(done.stdout)
    assert [bool(tasks) for tasks in declared] == [True] * len(AFTER), declared


@pytest.mark.parametrize("code", AFTER, ids=[f"after-{n}" for n in range(1, len(AFTER) + 1)])
def test_every_keyword_given_to_resilient_task_is_a_task_option(code: str):
    """Celery would take an unknown keyword as a class attribute: a typo would pass."""
    calls = [
        node
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "resilient_task"
    ]
    assert calls
    unknown = {
        kw.arg
        for call in calls
        for kw in call.keywords
        if kw.arg != "app" and not hasattr(ResilientTask, str(kw.arg))
    }
    assert unknown == set()
