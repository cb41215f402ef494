"""Every error pickles and survives Celery's JSON exception round trip."""

from __future__ import annotations

import pickle

import pytest
from celery import Celery

from celery_resilience.core import errors

ERRORS = [
    errors.TransientError("settlement pending", retry_after=10),
    errors.TransientError(),
    errors.PermanentError("no such invoice"),
    errors.GaveUp("gave up after 3 attempt(s): ...\n  #1 transient: HTTP 503"),
    errors.RetryScheduled("transient: HTTP 503 from a.example; attempt 1 of 6; retry in 1.0 s"),
    errors.Deferred("deferred: breaker 'p' open, half-open in 3.0 s"),
    errors.BreakerOpenError(),
    errors.ResilienceConfigError("bad"),
]


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_pickle_round_trip(exc):
    """A pickled and unpickled error has the same type, message and attributes."""
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert getattr(back, "retry_after", None) == getattr(exc, "retry_after", None)


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_json_result_backend_round_trip(exc):
    """Celery's JSON exception serialisation rebuilds the same type and message."""
    app = Celery("errors", backend="cache+memory://", set_as_current=False)
    try:
        backend = app.backend
        back = backend.exception_to_python(backend.prepare_exception(exc, "json"))
    finally:
        app.close()
    assert type(back) is type(exc)
    assert str(back) == str(exc)


def test_reschedule_repr_is_the_ledger_line():
    """What Flower shows for a retry (repr of the exception) is the line itself."""
    line = "transient: HTTP 503 from a.example; attempt 1 of 6; retry in 1.0 s; trace abc"
    assert repr(errors.RetryScheduled(line)) == line
