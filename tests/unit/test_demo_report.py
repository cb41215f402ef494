"""The demo's report compares like with like: a median over every task, done or not."""

from __future__ import annotations

import pytest

from example_project.report import median_of_all


@pytest.mark.parametrize(
    ("times", "median"),
    [
        ([1.0, 2.0, 3.0], 2.0),
        ([1.0, 2.0, 3.0, 4.0], 2.5),
        ([1.0, None, 2.0], 2.0),  # the one not done counts as the slowest
        ([0.5, 1.0, None, None], None),  # half not done: no median to show
        ([1.0, None, None], None),
        ([], None),
    ],
)
def test_tasks_not_done_count_as_slower_than_any_done(times, median):
    """A side with tasks still waiting cannot look faster than one whose tasks all ended."""
    assert median_of_all(times) == median


def test_waiting_tasks_raise_the_median_instead_of_leaving_it():
    """Two tasks done in 1 s, and 26 still waiting, is not 'a median of 1 s'."""
    assert median_of_all([1.0, 1.0, *([None] * 26)]) is None
    assert median_of_all([1.0, 1.0, 5.0]) == 1.0
