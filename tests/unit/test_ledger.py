"""The attempt ledger header: round trips, and hostile input is refused, never trusted."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from celery_resilience.core.ledger import (
    HISTORY_LIMIT,
    AttemptState,
    deferral_line,
    gave_up_message,
    retry_line,
)

states = st.builds(
    AttemptState,
    failures=st.integers(0, 999_999),
    deferrals=st.integers(0, 999_999),
    started=st.none() | st.floats(0, 9e10),
    not_before=st.none() | st.floats(0, 9e10),
    slot=st.none() | st.tuples(st.text(min_size=1, max_size=50), st.floats(0, 9e10)),
    history=st.lists(
        st.text(max_size=60).map(lambda s: s.replace("\n", " ")), max_size=HISTORY_LIMIT
    ).map(tuple),
)


@given(states)
def test_header_round_trips(state):
    """What an attempt writes, the next attempt reads back unchanged."""
    back = AttemptState.from_header(state.to_header())
    assert back is not None
    assert (back.failures, back.deferrals, back.started, back.not_before, back.slot) == (
        state.failures,
        state.deferrals,
        state.started,
        state.not_before,
        state.slot,
    )
    assert len(back.history) == len(state.history)


@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=50),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )
)
def test_any_input_parses_or_is_refused(raw):
    """Arbitrary header values never raise: a state or None."""
    result = AttemptState.from_header(raw)
    assert result is None or isinstance(result, AttemptState)


def test_wrong_types_are_refused():
    """Counters must be small non-negative ints; times finite; otherwise the header is refused."""
    good = {"v": 1, "f": 1, "d": 0}
    assert AttemptState.from_header(json.dumps(good)) is not None
    for bad in [
        {**good, "f": -1},
        {**good, "f": True},
        {**good, "f": 1.5},
        {**good, "d": "2"},
        {**good, "t0": "now"},
        {**good, "nb": float("inf")},
        {**good, "slot": ["x"]},
        {**good, "h": "text"},
        {**good, "h": [1]},
        {**good, "v": 2},
        [1, 2],
    ]:
        assert AttemptState.from_header(json.dumps(bad)) is None, bad


def test_oversized_header_is_refused():
    """A header above 16 KiB is refused before it is parsed."""
    assert (
        AttemptState.from_header(json.dumps({"v": 1, "f": 0, "d": 0, "h": ["x" * 20_000]})) is None
    )


def test_history_keeps_the_newest_and_counts_the_rest():
    """Beyond the limit the oldest entries go, and the drop is counted."""
    state = AttemptState()
    for n in range(HISTORY_LIMIT + 5):
        state = state.with_entry(f"#{n}")
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[0] == "#5"
    assert state.dropped == 5
    assert "(5 earlier entries dropped)" in gave_up_message(reason="r", state=state, trace_id="t")


def test_control_characters_never_reach_the_history():
    """An entry with control characters (a forged log line) is neutralised."""
    state = AttemptState().with_entry("ok\nFAKE LOG LINE\x1b[31m")
    assert "\n" not in state.history[0]
    assert "\x1b" not in state.history[0]


def test_ledger_lines_read_as_documented():
    """The retry and deferral lines carry verdict, cause, attempt k of n, countdown, trace."""
    line = retry_line(
        verdict="transient",
        cause="HTTP 503 from a.example",
        attempt=2,
        max_retries=8,
        countdown=3.41,
        trace_id="4bf9",
    )
    assert line == "transient: HTTP 503 from a.example; attempt 2 of 9; retry in 3.4 s; trace 4bf9"
    line = deferral_line(
        why="breaker 'p' open, half-open in 8.1 s",
        attempt=1,
        max_retries=None,
        countdown=9.3,
        trace_id="4bf9",
    )
    assert (
        line
        == "deferred: breaker 'p' open, half-open in 8.1 s; attempt 1; retry in 9.3 s; trace 4bf9"
    )
