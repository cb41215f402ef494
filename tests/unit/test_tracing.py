"""Trace context parsing and the per-attempt context."""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience.observability import tracing
from celery_resilience.observability.tracing import (
    AttemptInfo,
    TraceContext,
    bind_attempt,
    current_attempt,
    hold_attempt,
    new_span_bits,
    new_span_id,
    new_trace,
    next_unsafe_call_index,
    parse_traceparent,
    safe_text,
    safe_token,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
HEADER = f"00-{TRACE_ID}-{SPAN_ID}-01"

hex_ids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
trace_ids = hex_ids.filter(lambda s: s != "0" * 32)
span_ids = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16).filter(
    lambda s: s != "0" * 16
)
contexts = st.builds(TraceContext, trace_ids, span_ids, st.booleans())


def attempt(task_id: str = "task-1", attempt: int = 1, **kw: object) -> AttemptInfo:
    return AttemptInfo(
        trace_id=str(kw.get("trace_id", TRACE_ID)),
        span_id=str(kw.get("span_id", SPAN_ID)),
        task_id=task_id,
        task_name=str(kw.get("task_name", "shop.charge")),
        attempt=attempt,
    )


# --- TraceContext ---------------------------------------------------------------


def test_new_trace_has_valid_ids():
    """new_trace() makes a sampled context with 32- and 16-digit lowercase hex IDs."""
    ctx = new_trace()
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", ctx.span_id)
    assert ctx.sampled


def test_new_ids_differ():
    """Fresh IDs are random: two calls never give the same one."""
    assert new_trace().trace_id != new_trace().trace_id
    assert new_span_id() != new_span_id()


def test_traceparent_renders_version_00():
    """traceparent() is "00-<trace>-<span>-01", or "-00" when not sampled."""
    assert TraceContext(TRACE_ID, SPAN_ID).traceparent() == HEADER
    assert TraceContext(TRACE_ID, SPAN_ID, sampled=False).traceparent().endswith("-00")


def test_child_keeps_trace_with_fresh_span():
    """child() stays in the trace, keeps the sampled flag, and gets a new span ID."""
    ctx = TraceContext(TRACE_ID, SPAN_ID, sampled=False)
    child = ctx.child()
    assert (child.trace_id, child.sampled) == (TRACE_ID, False)
    assert child.span_id != SPAN_ID


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [
        ("0" * 32, SPAN_ID),
        (TRACE_ID, "0" * 16),
        (TRACE_ID.upper(), SPAN_ID),
        (TRACE_ID[:-1], SPAN_ID),
        (TRACE_ID, SPAN_ID + "0"),
        (TRACE_ID, 12345),
    ],
)
def test_trace_context_rejects_bad_ids(trace_id, span_id):
    """A TraceContext cannot hold an ID that would render an invalid header."""
    with pytest.raises(ValueError, match="_id must be"):
        TraceContext(trace_id, span_id)


# --- parse_traceparent ----------------------------------------------------------


def test_parse_valid_header():
    """The W3C example parses into its trace ID, span ID and sampled flag."""
    assert parse_traceparent(HEADER) == TraceContext(TRACE_ID, SPAN_ID, sampled=True)


def test_parse_keeps_only_sampled_bit():
    """Flags 00 mean not sampled; unknown flag bits are ignored."""
    assert parse_traceparent(HEADER[:-2] + "00") == TraceContext(TRACE_ID, SPAN_ID, False)
    assert parse_traceparent(HEADER[:-2] + "03") == TraceContext(TRACE_ID, SPAN_ID, True)
    assert parse_traceparent(HEADER[:-2] + "fe") == TraceContext(TRACE_ID, SPAN_ID, False)


def test_parse_future_version_with_more_fields():
    """A later version may add dash-separated fields after the first 55 characters."""
    assert parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01") is not None
    assert parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01-what-the-future-holds") == (
        TraceContext(TRACE_ID, SPAN_ID)
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        HEADER.encode(),
        "",
        HEADER.upper(),
        HEADER.replace(TRACE_ID, TRACE_ID.upper()),
        HEADER[:-2] + "0A",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"0-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"cc-{TRACE_ID}-{SPAN_ID}-01x",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f" {HEADER}",
        f"{HEADER}\n",
        f"cc-{TRACE_ID}-{SPAN_ID}-01-\x00",
        f"cc-{TRACE_ID}-{SPAN_ID}-01-é",
        f"cc-{TRACE_ID}-{SPAN_ID}-01-" + "a" * 500,
        f"00-{TRACE_ID[:-1]}٣-{SPAN_ID}-01",
    ],
)
def test_parse_rejects_invalid(value):
    """Anything that is not a valid lowercase W3C traceparent parses to None."""
    assert parse_traceparent(value) is None


@given(st.text())
def test_parse_never_raises_on_text(value):
    """parse_traceparent() is total on text: a context or None, never an exception."""
    result = parse_traceparent(value)
    assert result is None or isinstance(result, TraceContext)


@given(st.text(max_size=40))
def test_a_later_versions_fields_are_kept_only_when_printable_ascii(rest):
    """After the first 55 characters of a later version, a field separated by ``-`` is
    accepted exactly when it is printable ASCII."""
    value = f"cc-{TRACE_ID}-{SPAN_ID}-01-{rest}"
    expected = TraceContext(TRACE_ID, SPAN_ID) if rest.isascii() and rest.isprintable() else None
    assert parse_traceparent(value) == expected


non_strings = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary() | st.builds(object),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(non_strings)
def test_parse_never_raises_on_objects(value):
    """parse_traceparent() is total on any object, and anything but a str is None."""
    assert parse_traceparent(value) is None


@given(contexts)
def test_traceparent_round_trips(ctx):
    """parse_traceparent(ctx.traceparent()) gives ctx back."""
    assert parse_traceparent(ctx.traceparent()) == ctx


@given(contexts, st.text(alphabet="0123456789abcdef-", max_size=40))
def test_parse_accepts_future_versions(ctx, tail):
    """Any version but 00 and ff parses its first 55 characters, whatever follows a dash."""
    value = "01" + ctx.traceparent()[2:] + ("-" + tail if tail else "")
    assert parse_traceparent(value) == ctx


# --- safe_token -----------------------------------------------------------------


def test_safe_token_keeps_ordinary_ids():
    """Task IDs and dotted task names pass unchanged."""
    assert safe_token("9f1c2e3a-6b7d-4e8f-a0b1-c2d3e4f5a6b7") == (
        "9f1c2e3a-6b7d-4e8f-a0b1-c2d3e4f5a6b7"
    )
    assert safe_token("shop.tasks.charge") == "shop.tasks.charge"


def test_safe_token_escapes_controls_space_and_non_ascii():
    """Line breaks, spaces and non-ASCII cannot forge log fields: they become escapes."""
    assert safe_token("a\r\nb c\x1b[0m\x7f") == r"a\x0d\x0ab\x20c\x1b[0m\x7f"
    assert safe_token("café\u2028😀") == r"caf\xe9\u2028\U0001f600"


def test_safe_token_truncates_with_digest():
    """A long value is cut to the limit, ending in "~" and a digest of the whole value."""
    one, two = safe_token("x" * 300 + "1"), safe_token("x" * 300 + "2")
    assert len(one) == 128
    assert one.startswith("x" * 100)
    assert re.search(r"~[0-9a-f]{9}$", one)
    assert one != two


def test_safe_token_never_cuts_an_escape():
    """Truncation keeps whole escapes, even if that leaves the token below the limit."""
    token = safe_token("\n" * 100, limit=21)
    assert token == r"\x0a\x0a~" + token[-9:]


def test_safe_token_takes_any_object():
    """Non-strings go through str(), and one whose str() fails still gives a token."""

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError

    assert safe_token(42) == "42"
    assert safe_token(None) == "None"
    assert safe_token(Broken()) == r"<unprintable\x20Broken>"


def test_safe_token_rejects_tiny_limit():
    """A limit too small for the digest marker is refused."""
    with pytest.raises(ValueError, match="limit"):
        safe_token("abc", limit=4)


@given(st.text(), st.integers(min_value=16, max_value=200))
def test_safe_token_output_is_printable_bounded_and_idempotent(value, limit):
    """Always printable ASCII without spaces, within the limit, and a fixed point."""
    token = safe_token(value, limit)
    assert len(token) <= limit
    assert all("!" <= ch <= "~" for ch in token)
    assert safe_token(token, limit) == token


def test_safe_text_keeps_spaces():
    """safe_text() is safe_token() for prose: spaces stay, line breaks do not."""
    assert safe_text("HTTP 503 from\napi") == r"HTTP 503 from\x0aapi"


# --- AttemptInfo and binding ----------------------------------------------------


def test_attempt_info_makes_outside_values_safe():
    """Task IDs and names chosen by a publisher are escaped when the info is built."""
    info = attempt(task_id="id\nattempt=9", task_name="x y")
    assert info.task_id == r"id\x0aattempt=9"
    assert info.task_name == r"x\x20y"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"trace_id": "nope"}, ValueError),
        ({"span_id": "0" * 16}, ValueError),
        ({"attempt": 0}, ValueError),
        ({"attempt": True}, TypeError),
    ],
)
def test_attempt_info_validates(changes, error):
    """IDs must be valid and the attempt number counts from 1."""
    fields = {"trace_id": TRACE_ID, "span_id": SPAN_ID, "task_id": "t", "task_name": "n"}
    fields["attempt"] = 1
    fields.update(changes)
    with pytest.raises(error):
        AttemptInfo(**fields)


def test_attempt_info_renders_its_traceparent():
    """An attempt's traceparent names its own span as the parent of outbound calls."""
    assert attempt().traceparent() == HEADER
    assert attempt().trace_context() == TraceContext(TRACE_ID, SPAN_ID)


def test_no_attempt_outside_binding():
    """Outside bind_attempt() there is no current attempt."""
    assert current_attempt() is None


def test_bind_attempt_sets_and_restores():
    """Inside the block the info is current; after it, nothing is."""
    info = attempt()
    with bind_attempt(info) as bound:
        assert bound is info
        assert current_attempt() is info
    assert current_attempt() is None


def test_one_binding_is_entered_once():
    """As with a generator context manager, a second entry of the same binding is refused
    before it binds anything, and the first still unbinds on its exit."""
    info = attempt()
    binding = bind_attempt(info)
    with binding:
        with pytest.raises(RuntimeError, match="entered once"), binding:
            pass
        assert current_attempt() is info
    assert current_attempt() is None


def test_bind_attempt_nests():
    """An inner attempt (an eager task) shadows the outer one, which returns after it."""
    outer, inner = attempt("outer"), attempt("inner")
    with bind_attempt(outer):
        with bind_attempt(inner):
            assert current_attempt() is inner
        assert current_attempt() is outer


def test_bind_attempt_restores_on_exception():
    """An exception leaving the block still restores the previous attempt."""
    with pytest.raises(RuntimeError), bind_attempt(attempt()):
        raise RuntimeError
    assert current_attempt() is None


def _in_own_context(check: Callable[[], None]) -> None:
    """Run ``check`` in a copy of the context: a hold lasts until the next one."""
    contextvars.copy_context().run(check)


def test_a_held_attempt_is_current_while_it_still_holds():
    """An attempt held past its block is current while its condition holds, and never
    after it is once found false; an attempt bound meanwhile shadows it; the next hold
    replaces it."""

    def check() -> None:
        first, second, inner = attempt("first"), attempt("second"), attempt("inner")
        holds = [True]
        hold_attempt(first, lambda: holds[0])
        assert current_attempt() is first
        with bind_attempt(inner):
            assert current_attempt() is inner
        assert current_attempt() is first
        holds[0] = False
        assert current_attempt() is None
        holds[0] = True  # a hold found lapsed is gone for good: not asked again
        assert current_attempt() is None
        hold_attempt(second, lambda: True)
        assert current_attempt() is second

    _in_own_context(check)
    assert current_attempt() is None


def test_the_worker_holds_an_attempt_while_its_request_is_current():
    """The worker's hold lapses once Celery pops the attempt's request: not current under
    the next task's request, nor once the request is gone (stack empty)."""
    import gc  # noqa: PLC0415

    from celery import Celery  # noqa: PLC0415
    from celery.app.task import Context  # noqa: PLC0415

    from celery_resilience.integration.worker import _holder  # noqa: PLC0415

    app = Celery("hold", set_as_current=False)

    @app.task(shared=False)
    def work() -> None:
        pass

    stack = work.request_stack

    def held(task_id: str) -> tuple[AttemptInfo, Context]:
        """An attempt held by the worker's hold, its request pushed."""
        info, request = attempt(task_id), Context(id=task_id)
        stack.push(request)
        _holder(work, request)(info)
        return info, request

    def popped() -> None:
        info, _ = held("t1")
        assert current_attempt() is info
        stack.pop()
        assert current_attempt() is None
        stack.push(Context(id="t2"))  # the next task's request
        assert current_attempt() is None
        stack.pop()

    def under_another() -> None:  # a request pushed above the attempt's
        held("t3")
        stack.push(Context(id="t4"))
        assert current_attempt() is None
        stack.pop()
        stack.pop()

    def gone() -> None:  # the request gone, the stack empty: a dead reference is not its top
        _, request = held("t5")
        stack.pop()
        del request
        gc.collect()
        assert stack.top is None
        assert current_attempt() is None

    for case in (popped, under_another, gone):
        _in_own_context(case)


def test_bind_attempt_requires_attempt_info():
    """Binding anything else is a TypeError, not a silently broken context."""
    with pytest.raises(TypeError), bind_attempt({"task_id": "x"}):  # type: ignore[arg-type]
        pass


def test_other_threads_do_not_see_the_attempt():
    """An attempt is bound to its context: a new thread starts without one."""
    seen: list[object] = []
    with bind_attempt(attempt()):
        thread = threading.Thread(target=lambda: seen.append(current_attempt()))
        thread.start()
        thread.join(timeout=5)
    assert seen == [None]


# --- next_unsafe_call_index -----------------------------------------------------


def test_unsafe_call_index_is_zero_outside_an_attempt():
    """Outside an attempt there is no position to give: 0, and nothing is counted."""
    assert next_unsafe_call_index() == 0
    assert next_unsafe_call_index() == 0


def test_unsafe_call_index_counts_from_one():
    """Within an attempt, calls get positions 1, 2, 3."""
    with bind_attempt(attempt()):
        assert [next_unsafe_call_index() for _ in range(3)] == [1, 2, 3]


def test_unsafe_call_index_restarts_each_attempt():
    """A retry starts again from 1, so its n-th call matches the first attempt's n-th."""
    with bind_attempt(attempt(attempt=1)):
        assert [next_unsafe_call_index(), next_unsafe_call_index()] == [1, 2]
    with bind_attempt(attempt(attempt=2)):
        assert next_unsafe_call_index() == 1


def test_unsafe_call_index_of_nested_attempt_is_its_own():
    """An inner attempt counts apart; the outer one resumes where it was."""
    with bind_attempt(attempt("outer")):
        assert next_unsafe_call_index() == 1
        with bind_attempt(attempt("inner")):
            assert next_unsafe_call_index() == 1
        assert next_unsafe_call_index() == 2


def test_unsafe_call_index_shared_with_copied_context():
    """Work run in a copy of the attempt's context continues the same sequence."""
    with bind_attempt(attempt()):
        assert next_unsafe_call_index() == 1
        assert contextvars.copy_context().run(next_unsafe_call_index) == 2
        assert next_unsafe_call_index() == 3


@pytest.mark.parametrize("sampled", [True, False])
def test_an_attempt_built_from_checked_values_equals_one_built_with_checks(sampled):
    """``AttemptInfo.of_checked`` gives what the checking constructor gives for the same
    valid values, the sampled flag included."""
    span_id = new_span_id()
    built = AttemptInfo.of_checked(TRACE_ID, span_id, "abc-1", "shop.charge", 2, sampled=sampled)
    assert built == AttemptInfo(
        trace_id=TRACE_ID,
        span_id=span_id,
        task_id="abc-1",
        task_name="shop.charge",
        attempt=2,
        sampled=sampled,
    )


def test_span_bits_render_as_span_ids():
    """A span ID drawn as a number is 64 bits and renders as a valid ID."""
    for _ in range(200):
        bits = new_span_bits()
        assert 0 < bits < 2**64
        assert TraceContext(TRACE_ID, f"{bits:016x}").span_id == f"{bits:016x}"


def test_a_zero_draw_is_drawn_again(monkeypatch):
    """A draw of zero (an invalid span ID) is never handed out: the next draw is."""
    draws = iter([0, 0, 5])
    monkeypatch.setattr(tracing, "random_bits", lambda _bits: next(draws))
    assert new_span_bits() == 5
    draws = iter([0, 7])
    assert new_span_id() == "0000000000000007"
