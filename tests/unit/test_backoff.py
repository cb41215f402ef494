"""Specification of celery_resilience.core.backoff: countdowns from tenacity wait strategies."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience.core.backoff import (
    DEFAULT_BACKOFF,
    MIN_COUNTDOWN,
    Countdown,
    backoff_seconds,
    check_backoff,
    retry_countdown,
    split_wait,
)

attempts = st.integers(min_value=1, max_value=200)
retry_afters = st.none() | st.floats(min_value=0, max_value=3600)
remainings = st.none() | st.floats(min_value=-10, max_value=1e5)
seeds = st.integers(min_value=0, max_value=2**32)


def countdown_with_seed(seed: int, attempt: int, **kwargs: float | None) -> Countdown:
    """A countdown with both the ``random`` module and ``rng`` seeded from ``seed``."""
    random.seed(seed)
    return retry_countdown(DEFAULT_BACKOFF, attempt, rng=random.Random(seed), **kwargs)


# -- properties of retry_countdown -------------------------------------------------------


@given(attempts, seeds)
def test_default_countdown_lies_between_the_minimum_and_the_cap(attempt: int, seed: int) -> None:
    """The default backoff gives a countdown in [MIN_COUNTDOWN, 60] s."""
    countdown = countdown_with_seed(seed, attempt)
    assert countdown.seconds is not None
    assert MIN_COUNTDOWN <= countdown.seconds <= 60.0


@given(attempts, st.floats(min_value=0, max_value=3600), seeds)
def test_retry_after_is_a_floor(attempt: int, retry_after: float, seed: int) -> None:
    """A countdown is never shorter than Retry-After, and the jitter above it is bounded."""
    countdown = countdown_with_seed(seed, attempt, retry_after=retry_after)
    assert countdown.seconds is not None
    floor = max(retry_after, MIN_COUNTDOWN)
    assert floor <= countdown.seconds <= max(60.0, 2 * floor)


@given(attempts, retry_afters, remainings, seeds)
def test_countdown_starts_before_the_deadline(
    attempt: int, retry_after: float | None, remaining: float | None, seed: int
) -> None:
    """With a deadline the retry starts before it, or the countdown gives up."""
    countdown = countdown_with_seed(seed, attempt, retry_after=retry_after, remaining=remaining)
    if remaining is not None and countdown.seconds is not None:
        assert countdown.seconds < remaining


@given(attempts, retry_afters, remainings, seeds)
def test_countdown_gives_up_only_when_the_floor_does_not_fit(
    attempt: int, retry_after: float | None, remaining: float | None, seed: int
) -> None:
    """A countdown is None exactly when its floor reaches the deadline."""
    countdown = countdown_with_seed(seed, attempt, retry_after=retry_after, remaining=remaining)
    floor = max(retry_after or 0.0, MIN_COUNTDOWN)
    gives_up = remaining is not None and floor >= remaining
    assert (countdown.seconds is None) == gives_up
    assert countdown.reason == "deadline" or not gives_up


@given(attempts, retry_afters, remainings, seeds)
def test_countdown_is_reproducible_with_seeded_randomness(
    attempt: int, retry_after: float | None, remaining: float | None, seed: int
) -> None:
    """The same seeds give the same countdown."""
    first = countdown_with_seed(seed, attempt, retry_after=retry_after, remaining=remaining)
    second = countdown_with_seed(seed, attempt, retry_after=retry_after, remaining=remaining)
    assert first == second


# -- retry_countdown, case by case ------------------------------------------------------


def test_without_retry_after_the_countdown_is_the_backoff() -> None:
    """No Retry-After, no deadline: the strategy's value, reason "backoff"."""
    assert retry_countdown(tenacity.wait_fixed(3), 1) == Countdown(3.0, "backoff")


def test_backoff_beyond_retry_after_is_kept() -> None:
    """A backoff that already waits past Retry-After is the countdown."""
    assert retry_countdown(tenacity.wait_fixed(30), 1, retry_after=5) == Countdown(30.0, "backoff")


def herd(backoff: float, retry_after: float, tasks: int) -> list[float]:
    """The countdowns of ``tasks`` tasks with a fixed backoff, all told the same Retry-After."""
    rng = random.Random(7)
    countdowns = [
        retry_countdown(tenacity.wait_fixed(backoff), 1, retry_after=retry_after, rng=rng)
        for _ in range(tasks)
    ]
    return [c.seconds for c in countdowns if c.seconds is not None]


def test_retry_after_herd_is_spread() -> None:
    """A hundred tasks told "Retry-After: 5" come back spread over at least 10 % of it."""
    waits = herd(backoff=0, retry_after=5, tasks=100)
    assert len(set(waits)) == 100
    assert 5.0 <= min(waits) < 5.1
    assert 5.4 < max(waits) <= 5.5


def test_retry_after_jitter_takes_the_backoffs_own_spread() -> None:
    """Above the floor, the jitter reaches up to the backoff's value when that is larger."""
    waits = herd(backoff=4, retry_after=10, tasks=200)
    assert 10.0 <= min(waits) < 10.5
    assert 13.5 < max(waits) <= 14.0


def test_retry_after_decides_the_reason() -> None:
    """A countdown set by the Retry-After floor says "retry-after"."""
    countdown = retry_countdown(tenacity.wait_fixed(1), 1, retry_after=20)
    assert countdown.reason == "retry-after"


def test_deadline_caps_the_countdown_with_a_margin() -> None:
    """A backoff past the deadline is cut to the deadline less min(1 s, 10 %)."""
    assert retry_countdown(tenacity.wait_fixed(30), 1, remaining=20) == Countdown(19.0, "deadline")
    assert retry_countdown(tenacity.wait_fixed(30), 1, remaining=5) == Countdown(4.5, "deadline")


def test_deadline_never_cuts_below_retry_after() -> None:
    """When the margin would cut into the Retry-After floor, the floor stands."""
    countdown = retry_countdown(tenacity.wait_fixed(1), 1, retry_after=9.9, remaining=10)
    assert countdown == Countdown(9.9, "deadline")


def test_retry_after_beyond_the_deadline_gives_up() -> None:
    """A Retry-After that reaches the deadline gives up."""
    countdown = retry_countdown(tenacity.wait_fixed(1), 1, retry_after=10, remaining=10)
    assert countdown == Countdown(None, "deadline")


@pytest.mark.parametrize("remaining", [MIN_COUNTDOWN, 0.0, -5.0])
def test_passed_deadline_gives_up(remaining: float) -> None:
    """No room for even the shortest countdown: give up."""
    countdown = retry_countdown(tenacity.wait_fixed(1), 1, remaining=remaining)
    assert countdown.seconds is None


def test_infinite_deadline_changes_nothing() -> None:
    """An infinite ``remaining`` is the same as no deadline."""
    countdown = retry_countdown(tenacity.wait_fixed(7), 1, remaining=math.inf)
    assert countdown == Countdown(7.0, "backoff")


@pytest.mark.parametrize("retry_after", [-1.0, math.nan, math.inf])
def test_invalid_retry_after_is_rejected(retry_after: float) -> None:
    """A negative, NaN or infinite retry_after is a ValueError."""
    with pytest.raises(ValueError, match="retry_after"):
        retry_countdown(tenacity.wait_fixed(1), 1, retry_after=retry_after)


def test_nan_remaining_is_rejected() -> None:
    """A NaN deadline is a ValueError."""
    with pytest.raises(ValueError, match="remaining"):
        retry_countdown(tenacity.wait_fixed(1), 1, remaining=math.nan)


def test_countdown_is_frozen() -> None:
    """A Countdown is an immutable value."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Countdown(1.0, "backoff").seconds = 2.0  # type: ignore[misc]


# -- backoff_seconds with tenacity's strategies ----------------------------------------


def test_default_backoff_is_full_jitter_exponential() -> None:
    """The default draws in [0, 2 ** (attempt - 1)] s, capped at 60, never below the minimum."""
    random.seed(1)
    first = [backoff_seconds(DEFAULT_BACKOFF, 1) for _ in range(200)]
    late = [backoff_seconds(DEFAULT_BACKOFF, 30) for _ in range(200)]
    assert all(MIN_COUNTDOWN <= s <= 1.0 for s in first)
    assert all(MIN_COUNTDOWN <= s <= 60.0 for s in late)
    assert max(late) > 50.0


@pytest.mark.parametrize(
    ("wait", "expected"),
    [
        (tenacity.wait_fixed(2), [2.0, 2.0, 2.0]),
        (tenacity.wait_exponential(multiplier=1, max=3), [1.0, 2.0, 3.0]),
        (tenacity.wait_incrementing(start=1, increment=2), [1.0, 3.0, 5.0]),
        (tenacity.wait_chain(tenacity.wait_fixed(1), tenacity.wait_fixed(5)), [1.0, 5.0, 5.0]),
        (tenacity.wait_none(), [MIN_COUNTDOWN] * 3),
        (lambda state: 0.5 * state.attempt_number, [0.5, 1.0, 1.5]),
    ],
    ids=["fixed", "exponential", "incrementing", "chain", "none", "callable"],
)
def test_deterministic_strategies(wait: tenacity.wait.wait_base, expected: list[float]) -> None:
    """Deterministic strategies give tenacity's value for failures 1, 2, 3."""
    assert [backoff_seconds(wait, attempt) for attempt in (1, 2, 3)] == expected


@pytest.mark.parametrize(
    ("wait", "low", "high"),
    [
        (tenacity.wait_random_exponential(multiplier=1, max=10), MIN_COUNTDOWN, 10.0),
        (tenacity.wait_exponential_jitter(initial=1, max=10, jitter=1), 1.0, 10.0),
        (tenacity.wait_fixed(1) + tenacity.wait_random(0, 1), 1.0, 2.0),
        (tenacity.wait_random(0, 1), MIN_COUNTDOWN, 1.0),
    ],
    ids=["random-exponential", "exponential-jitter", "fixed-plus-random", "random"],
)
@given(attempt=attempts, seed=seeds)
def test_random_strategies_stay_in_their_range(
    wait: tenacity.wait.wait_base, low: float, high: float, attempt: int, seed: int
) -> None:
    """Random and combined strategies give values within their own bounds."""
    random.seed(seed)
    assert low <= backoff_seconds(wait, attempt) <= high


def test_strategy_sees_a_real_retry_call_state() -> None:
    """The strategy is called with a tenacity RetryCallState for the given failure."""
    seen: list[tenacity.RetryCallState] = []

    def record(state: tenacity.RetryCallState) -> float:
        seen.append(state)
        return 1.0

    backoff_seconds(record, 4)
    assert isinstance(seen[0], tenacity.RetryCallState)
    assert seen[0].attempt_number == 4


def test_wait_exception_sees_the_exception() -> None:
    """wait_exception is given the failure's exception through the call state."""
    wait = tenacity.wait_exception(lambda exc: 9.0 if isinstance(exc, TimeoutError) else 1.0)
    assert backoff_seconds(wait, 1, exc=TimeoutError()) == 9.0
    countdown = retry_countdown(wait, 1, exc=KeyError())
    assert countdown == Countdown(1.0, "backoff")


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, "3", None, True])
def test_strategy_returning_junk_is_a_value_error(value: object) -> None:
    """A strategy returning a negative, NaN, infinite or non-number value raises
    ValueError naming the strategy."""

    def broken(state: tenacity.RetryCallState) -> float:
        return value  # type: ignore[return-value]

    with pytest.raises(ValueError, match="broken"):
        backoff_seconds(broken, 1)


@pytest.mark.parametrize(
    ("attempt", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_attempt_counts_failures_from_one(attempt: object, error: type[Exception]) -> None:
    """``attempt`` is an int >= 1."""
    with pytest.raises(error, match="attempt"):
        backoff_seconds(tenacity.wait_fixed(1), attempt)  # type: ignore[arg-type]


# -- check_backoff ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "wait",
    [5, "x", None, lambda: 1, lambda a, b: 1, tenacity.wait_fixed],
    ids=["int", "str", "none", "no-argument-lambda", "two-argument-lambda", "class"],
)
def test_check_backoff_rejects(wait: object) -> None:
    """Numbers, strings, callables that cannot take a RetryCallState, and strategy
    classes (not instances) are rejected with a TypeError naming the option."""
    with pytest.raises(TypeError, match=r"^retry_backoff must be a tenacity wait strategy"):
        check_backoff(wait, option="retry_backoff")


@pytest.mark.parametrize(
    "wait",
    [
        tenacity.wait_fixed(1),
        tenacity.wait_fixed(1) + tenacity.wait_random(0, 1),
        lambda state: 1.0,
        lambda state, scale=2: 1.0,
        lambda *args: 1.0,
    ],
    ids=["strategy", "combined", "one-argument", "defaulted-extra", "varargs"],
)
def test_check_backoff_accepts(wait: object) -> None:
    """Strategy instances and callables taking one positional argument are accepted."""
    check_backoff(wait)


# -- split_wait ------------------------------------------------------------------------


def test_split_wait_caps_the_first_leg() -> None:
    """A wait longer than the cap is taken a cap at a time."""
    assert split_wait(5000.0, 3000.0) == 3000.0


def test_split_wait_keeps_a_short_wait_whole() -> None:
    """A wait shorter than the cap, or with no cap, is one leg."""
    assert (split_wait(20.0, 3000.0), split_wait(20.0, None)) == (20.0, 20.0)


@pytest.mark.parametrize(
    ("total", "cap"), [(10.0, 0.0), (10.0, -1.0), (-1.0, 5.0), (math.nan, 5.0)]
)
def test_split_wait_rejects_nonsense(total: float, cap: float) -> None:
    """A cap <= 0 or a negative or NaN total is a ValueError."""
    with pytest.raises(ValueError):
        split_wait(total, cap)


@given(st.floats(min_value=0, max_value=1e7), st.floats(min_value=1e-3, max_value=1e7))
def test_split_wait_never_exceeds_either(total: float, cap: float) -> None:
    """The first leg is never longer than the cap nor than the whole wait."""
    leg = split_wait(total, cap)
    assert leg <= cap
    assert leg <= total
