"""The pytest plugin seen from a user's test suite (pytester runs it in a fresh session)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

USER_TASKS = textwrap.dedent(
    """
    from celery_resilience import CircuitBreaker, TransientError, resilient_task

    def flaky(app, failures, **options):
        left = list(failures)

        @resilient_task(app=app, bind=True, name="user.flaky", shared=False, **options)
        def task(self):
            if left:
                raise left.pop(0)
            return "done"

        return task
    """
)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # in this process celery_resilience is imported already: pytest cannot rewrite it again
    return pytester.runpytest(
        "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning", *args
    )


@pytest.fixture
def user_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(user_tasks=USER_TASKS)
    return pytester


def test_a_users_test_passes_with_the_fixtures(user_suite: pytest.Pytester):
    user_suite.makepyfile(
        test_user="""
        import pytest
        from celery_resilience import TransientError
        from user_tasks import flaky

        def test_retried_twice_then_succeeded(resilience_app, resilience_attempts,
                                              resilience_clock):
            start = resilience_clock.now()
            task = flaky(resilience_app, [TransientError("a"), TransientError("b")])
            assert task.delay().get() == "done"
            resilience_attempts.of(task).assert_retried(2, then="succeeded")
            resilience_attempts.assert_ledger("transient: ", "transient: ")
            waited = sum(resilience_attempts.countdowns)
            assert resilience_clock.now() - start == pytest.approx(waited)
        """
    )
    result = _run(user_suite)
    result.assert_outcomes(passed=1)


def test_a_failing_assertion_tells_the_whole_story(user_suite: pytest.Pytester):
    user_suite.makepyfile(
        test_user="""
        from celery_resilience import TransientError
        from user_tasks import flaky

        def test_expects_one_retry(resilience_app, resilience_attempts):
            task = flaky(resilience_app, [TransientError("a"), TransientError("b")])
            task.delay()
            resilience_attempts.assert_retried(1, then="succeeded")
        """
    )
    result = _run(user_suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: expected 1 retry then succeeded, but the attempts were:",
            "E*#1 retried: transient: TransientError; attempt 1 of 6; retry in * s; trace *",
            "E*#2 retried: transient: TransientError; attempt 2 of 6; retry in * s; trace *",
            "E*#3 succeeded",
        ]
    )
    # the helpers hide their own frames: the failure points at the user's line
    assert "raise self._fail" not in result.stdout.str()


COUNTDOWNS = """
from celery_resilience import TransientError
from user_tasks import flaky

def test_print_countdowns(resilience_app, resilience_attempts):
    task = flaky(resilience_app, [TransientError("x")] * 4)
    task.delay()
    print("COUNTDOWNS", resilience_attempts.countdowns)
"""


def _countdowns(pytester: pytest.Pytester) -> str:
    result = _run(pytester, "-s")
    result.assert_outcomes(passed=1)
    (line,) = [line for line in result.outlines if "COUNTDOWNS" in line]
    return line.split("COUNTDOWNS", 1)[1]


def test_seeded_jitter_gives_the_same_countdowns_on_every_run(user_suite: pytest.Pytester):
    """Two sessions, the same seed: the same countdowns; another seed: others."""
    user_suite.makepyfile(test_user=COUNTDOWNS)
    first, second = _countdowns(user_suite), _countdowns(user_suite)
    assert first == second
    user_suite.makeconftest(
        """
        import pytest

        @pytest.fixture
        def resilience_seed():
            return 7
        """
    )
    assert _countdowns(user_suite) != first


def test_the_plugin_applies_nothing_unasked(user_suite: pytest.Pytester):
    """A test that asks for no fixture runs a task the usual way: real time, no records."""
    user_suite.makepyfile(
        test_user="""
        import random
        from celery import Celery
        from celery_resilience import signals

        def test_untouched():
            assert not signals.attempt_started.receivers
            state = random.getstate()
            app = Celery("plain", set_as_current=False)
            assert not app.conf.task_always_eager
            assert random.getstate() == state
        """
    )
    _run(user_suite).assert_outcomes(passed=1)


def test_importing_the_package_does_not_import_pytest():
    """pytest is optional: only the plugin module imports it."""
    code = (
        "import sys, celery_resilience, celery_resilience.testing; print('pytest' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
