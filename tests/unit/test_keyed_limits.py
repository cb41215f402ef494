"""Per-key limits: key derivation (pure), declaration checks, the in-process store's
keyed state, and a key function that raises."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import (
    CircuitBreaker,
    ConcurrencyLimit,
    GaveUp,
    RateLimit,
    resilient_task,
)
from celery_resilience.core.gates import BreakerState, GateAsk, OutcomeReport
from celery_resilience.core.keying import (
    KEY_RE,
    MAX_KEY_CHARS,
    OVERFLOW,
    KeyFunctionError,
    as_text,
    bounded,
    escape,
    key_text,
    unescape,
)
from celery_resilience.core.options import TaskOptions, bind_keys
from celery_resilience.core.policies import parse_policy
from celery_resilience.integration.eager import eager_gates
from celery_resilience.state.keys import KeySpace
from celery_resilience.state.keys import escape as escape_from_keys
from celery_resilience.state.memory import MemoryStore
from celery_resilience.testing import eager_app


def by_tenant(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    return kwargs["tenant"]


POLICIES = [
    CircuitBreaker("up", key=by_tenant),
    RateLimit("up", "10/s", key=by_tenant),
    ConcurrencyLimit("up", 2, key=by_tenant),
]

# -- key derivation ----------------------------------------------------------------------


def test_key_text_turns_each_kind_of_result_into_text():
    """str as is, bytes decoded with backslashreplace, anything else through str()."""
    assert as_text("acme") == "acme"
    assert as_text(b"acme\xff") == "acme\\xff"
    assert as_text(bytearray(b"x")) == "x"
    assert as_text(42) == "42"
    assert as_text(None) == "None"
    assert key_text(by_tenant, (), {"tenant": "a b/c"}) == "a%20b%2Fc"


def test_escape_moved_but_still_importable_from_state_keys():
    """The escape function lives in core.keying; state.keys re-exports the same one."""
    assert escape_from_keys is escape


@given(st.text())
def test_a_bounded_key_is_short_and_safe(text: str):
    """Whatever the text (binary, control characters, surrogates, any length), the key is
    at most 64 characters of [A-Za-z0-9._%-], or ~ and a 32-digit digest."""
    key = bounded(text)
    assert KEY_RE.fullmatch(key)
    assert len(key) <= MAX_KEY_CHARS
    assert key != OVERFLOW


@given(st.text(), st.text())
def test_escaping_is_injective(a: str, b: str):
    """Two different texts never escape to the same key (nor, bounded, share one)."""
    if a != b:
        assert escape(a) != escape(b)
        assert bounded(a) != bounded(b)


@given(st.text(max_size=30))
def test_escaping_round_trips(text: str):
    """unescape undoes escape for any text without lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert unescape(escape(text)) == text


@given(st.binary(min_size=1, max_size=2000))
def test_binary_and_long_results_become_bounded_keys(raw: bytes):
    """A key function returning bytes of any size gives a bounded key, the same each time."""
    key = key_text(lambda _a, _k: raw, (), {})
    assert len(key) <= MAX_KEY_CHARS
    assert key == key_text(lambda _a, _k: raw, (), {})


def test_a_long_key_becomes_a_digest():
    """An escaped key over 64 characters is ~ and the BLAKE2b hex digest (16 bytes)."""
    assert bounded("x" * 64) == "x" * 64
    long = bounded("x" * 65)
    assert long.startswith("~")
    assert len(long) == 33
    digest = hashlib.blake2b(("%C3%A9" * 11).encode(), digest_size=16).hexdigest()
    assert bounded("é" * 11) == "~" + digest  # 66 characters once escaped
    assert bounded("é" * 10) == "%C3%A9" * 10


@given(
    name_a=st.text(min_size=1, max_size=20).filter(lambda n: all(ord(c) >= 32 for c in n)),
    name_b=st.text(min_size=1, max_size=20).filter(lambda n: all(ord(c) >= 32 for c in n)),
    key=st.text(max_size=80),
)
def test_keyed_state_never_shares_a_redis_key_with_an_unkeyed_name(name_a, name_b, key):
    """The keys of one key of name_a are never the keys of name_b (unkeyed), nor those of
    its overflow state, nor its registry."""
    space = KeySpace("p")
    keyed = set(space.breaker(name_a, bounded(key)))
    keyed |= {space.limiter(name_a, bounded(key)), space.concurrency(name_a, bounded(key))}
    others = set(space.breaker(name_b)) | {space.limiter(name_b), space.concurrency(name_b)}
    others |= set(space.breaker(name_a, OVERFLOW)) | set(space.registry("breaker", name_a))
    assert not keyed & others


# -- declaration -----------------------------------------------------------------------


@pytest.mark.parametrize("build", [CircuitBreaker, RateLimit, ConcurrencyLimit])
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"key": "tenant"}, "key must be a function"),
        ({"key": by_tenant, "max_keys": 0}, "max_keys must be an int >= 1"),
        ({"key": by_tenant, "max_keys": True}, "max_keys must be an int >= 1"),
        ({"key": by_tenant, "max_keys": 10.0}, "max_keys must be an int >= 1"),
        ({"bound_key": "acme"}, "bound_key is set by the worker"),
        ({"key": by_tenant, "bound_key": "a b"}, "bound_key is set by the worker"),
    ],
)
def test_bad_key_options_are_refused_at_declaration(build, options, match):
    """A key that is not callable, a max_keys that is not a positive int, a bound key by
    hand: ValueError naming the policy and the field."""
    args: tuple[Any, ...] = {
        CircuitBreaker: ("up",),
        RateLimit: ("up", "1/s"),
        ConcurrencyLimit: ("up", 1),
    }[build]
    with pytest.raises(ValueError, match=f"{build.__name__}: {match}"):
        build(*args, **options)


def test_keyed_policies_compare_and_hash():
    """Equal when the key function is the same object; hashable; binding makes another."""
    a = RateLimit("up", "10/s", key=by_tenant)
    assert a == RateLimit("up", "10/s", key=by_tenant)
    assert a != RateLimit("up", "10/s", key=lambda args, kwargs: 1)
    assert a != RateLimit("up", "10/s")
    assert hash(a) == hash(RateLimit("up", "10/s", key=by_tenant))
    assert a.bind("x") == a.bind("x") != a.bind("y")
    assert a.keyed
    assert not RateLimit("up", "10/s").keyed


@pytest.mark.parametrize("section", ["breaker", "rate_limit", "concurrency"])
@pytest.mark.parametrize("field", ["key", "max_keys"])
def test_a_named_policy_cannot_declare_a_key(section, field):
    """A key is a function: configuration cannot hold one, and says so."""
    base = {"breaker": {}, "rate_limit": {"rate": "1/s"}, "concurrency": {"limit": 1}}[section]
    with pytest.raises(ValueError, match="declare them in code"):
        parse_policy("p", {section: {**base, field: 5}})


def test_bind_keys_binds_each_keyed_limit_and_leaves_others():
    """Each keyed limit gets the call's key; unkeyed ones and unkeyed options stay as they are."""
    plain = TaskOptions(breaker=CircuitBreaker("plain"))
    assert bind_keys(plain, (), {"tenant": "a"}) is plain
    options = TaskOptions(breaker=POLICIES[0], limiter=RateLimit("r", "1/s"))
    bound = bind_keys(options, (), {"tenant": "a b"})
    assert bound.breaker is not None
    assert bound.breaker.bound_key == "a%20b"
    assert bound.limiter == options.limiter


def test_bind_keys_names_the_policy_whose_key_function_raised():
    """A key function that raises becomes KeyFunctionError naming kind and name."""
    options = TaskOptions(limiter=POLICIES[1])
    with pytest.raises(KeyFunctionError, match="key function of RateLimit 'up' raised KeyError"):
        bind_keys(options, (), {})


# -- the in-process store --------------------------------------------------------------


def _ask(holder: str, key: str, **parts: Any) -> GateAsk:
    bound = {name: policy.bind(key) for name, policy in parts.items()}
    return GateAsk(holder=holder, **bound)


def test_keys_beyond_max_keys_share_one_overflow_state():
    """With max_keys=2, a third key is not refused: it shares the overflow state."""
    store = MemoryStore(now=lambda: 100.0)
    pool = ConcurrencyLimit("up", 1, key=by_tenant, max_keys=2)
    assert store.gate(_ask("h1", "a", concurrency=pool)).overflow == frozenset()
    assert store.gate(_ask("h2", "b", concurrency=pool)).allowed  # its own slot
    third = store.gate(_ask("h3", "c", concurrency=pool))
    assert third.allowed
    assert third.overflow == {"c"}
    fourth = store.gate(_ask("h4", "d", concurrency=pool))  # the overflow's one slot is taken
    assert not fourth.allowed
    assert fourth.overflow == {"c"}


def test_a_keyed_breaker_opens_for_one_key_only():
    """Failures of one key open that key's breaker; another key still passes."""
    store = MemoryStore(now=lambda: 100.0)
    breaker = CircuitBreaker("up", key=by_tenant, minimum_calls=3)
    transitions = []
    for i in range(3):
        assert store.gate(_ask(f"h{i}", "bad", breaker=breaker)).allowed
        report = OutcomeReport(
            holder=f"h{i}", breaker=breaker.bind("bad"), breaker_outcome="failure"
        )
        transitions += store.record(report).transitions
    assert [(t.name, t.key, t.new) for t in transitions] == [("up", "bad", BreakerState.OPEN)]
    assert not store.gate(_ask("x", "bad", breaker=breaker)).allowed
    assert store.gate(_ask("y", "good", breaker=breaker)).allowed


# -- a key function that raises -----------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("keyed", broker="memory://", backend="cache+memory://", set_as_current=False)
    with eager_app(app, propagate=False):
        yield app
    app.close()


def test_a_key_function_that_raises_gives_up_at_once(app):
    """FAILURE with GaveUp naming the task and the policy, one dead letter, no retry, and
    the body never runs."""
    calls: list[int] = []

    @resilient_task(app=app, name="keyed.broken", limiter=POLICIES[1], max_retries=5)
    def broken(**_: Any) -> None:
        calls.append(1)

    result = broken.delay(other=1)
    assert result.state == "FAILURE"
    assert isinstance(result.result, GaveUp)
    assert "keyed.broken" in str(result.result)
    assert "key function of RateLimit 'up' raised KeyError" in str(result.result)
    assert calls == []
    letters = [x for x in eager_gates(app).dead_letters if x.task_name == "keyed.broken"]
    assert [x.reason for x in letters] == ["key_function_failed"]
