"""Dead letters end to end: written by a real worker, listed, shown, requeued, purged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from celery_resilience.cli.letters import parse_duration
from celery_resilience.observability.tracing import parse_traceparent
from celery_resilience.state.deadletters import DeadLetter, DeadLetters
from celery_resilience.state.keys import KeySpace
from example_project.upstream import Upstream
from tests.helpers.inspection import Rig, rig_fixture
from tests.helpers.polling import wait_until

pytestmark = pytest.mark.integration


rig = rig_fixture("letters")


@pytest.fixture
def letters(rig: Rig) -> Iterator[DeadLetters]:
    """The module's dead-letter stream, emptied after each test."""
    stream = DeadLetters(rig.store.client, KeySpace(rig.prefix))
    yield stream
    stream.purge()


def _letter(**changes: object) -> DeadLetter:
    base = DeadLetter(
        task_name="res.call",
        task_id="t-1",
        args="['/x']",
        kwargs="{}",
        args_json='["/x"]',
        kwargs_json="{}",
        verdict="transient",
        cause="HTTP 503",
        reason="retries exhausted",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        attempts=6,
        history=("#1 transient: HTTP 503",),
        worker="w1@host",
        queue=None,
        failed_at=1_700_000_000.0,
        first_attempt_at=1_699_999_990.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _trace_ids(upstream: Upstream, prefix: str) -> list[tuple[str, str]]:
    out = []
    for record in upstream.requests(prefix):
        ctx = parse_traceparent(record.header("traceparent"))
        assert ctx is not None
        out.append((ctx.trace_id, ctx.span_id))
    return out


def test_gave_up_and_permanent_failures_become_letters(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """A task that gave up and one that failed permanently each leave one full letter."""
    upstream.script(f"/{unique}/down", [], then=503)
    upstream.script(f"/{unique}/gone", [], then=404)
    client = rig.client()
    down = client.send_task("res.call3", args=[f"/{unique}/down"])
    gone = client.send_task("res.call", args=[f"/{unique}/gone"], kwargs={"method": "GET"})
    for result in (down, gone):
        with pytest.raises(Exception):  # noqa: B017 - the kind is checked through the letters
            result.get(timeout=30)
    wait_until(lambda: letters.count() == 2, timeout=10, what="two dead letters")

    listed = json.loads(rig.cli("dead-letters", "list", "--json").stdout)
    by_task = {x["task_id"]: x for x in listed}
    gave_up, permanent = by_task[down.id], by_task[gone.id]

    (trace_id, _), *_ = _trace_ids(upstream, f"/{unique}/down")
    host = upstream.url.split("//", 1)[1]
    assert gave_up["task_name"] == "res.call3"
    assert gave_up["verdict"] == "transient"
    assert gave_up["reason"] == "retries exhausted (max_retries=3)"
    assert gave_up["attempts"] == 4 == upstream.count(f"/{unique}/down")
    assert gave_up["history"] == [f"#{i} transient: HTTP 503 from {host}" for i in range(1, 5)]
    assert gave_up["trace_id"] == trace_id
    assert gave_up["args_json"] == json.dumps([f"/{unique}/down"])
    assert gave_up["queue"] == rig.queue
    assert gave_up["worker"] == rig.worker.nodename
    assert gave_up["first_attempt_at"] <= gave_up["failed_at"]

    assert permanent["verdict"] == "permanent"
    assert permanent["attempts"] == 1
    assert permanent["kwargs"] == "{'method': 'GET'}"
    assert permanent["history"] == [f"#1 permanent: HTTP 404 from {host}"]

    shown = rig.cli("dead-letters", "show", gave_up["id"])
    assert shown.returncode == 0, shown.stderr
    assert f"trace:         {trace_id}" in shown.stdout
    assert "requeue:       possible" in shown.stdout
    assert shown.stdout.rstrip().endswith(f"  #4 transient: HTTP 503 from {host}")
    table = rig.cli("dead-letters", "list")
    assert table.stdout.splitlines()[0].split() == [
        "ID",
        "FAILED",
        "AT",
        "TASK",
        "VERDICT",
        "ATTEMPTS",
        "CAUSE",
    ]
    assert letters.count() == 2  # reading deletes nothing


def test_requeue_sends_a_new_task_in_the_old_trace_and_removes_the_letter(
    rig: Rig, upstream: Upstream, letters: DeadLetters, unique: str
):
    """``requeue`` republishes with a new ID and the letter's trace ID, then drops the letter."""
    upstream.script(f"/{unique}", [503, 503, 503, 503], then=200)
    client = rig.client()
    first = client.send_task("res.call3", args=[f"/{unique}/x"])
    with pytest.raises(Exception):  # noqa: B017 - gave up, as the letter says
        first.get(timeout=30)
    letter = wait_until(lambda: letters.list(1), timeout=10, what="the dead letter")[0]
    assert letter.task_id == first.id

    result = rig.cli("dead-letters", "requeue", letter.id)
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert new_id != first.id
    assert client.AsyncResult(new_id).get(timeout=30)["status"] == 200
    assert letters.get(letter.id) is None
    assert letters.count() == 0

    calls = _trace_ids(upstream, f"/{unique}")
    assert len(calls) == 5
    assert {trace for trace, _ in calls} == {letter.trace_id}
    assert len({span for _, span in calls}) == 5
    again = rig.cli("dead-letters", "requeue", letter.id)
    assert (again.returncode, again.stderr.strip()) == (
        1,
        f"Error: no dead letter {letter.id} under prefix '{rig.prefix}'",
    )


def test_requeue_refuses_a_letter_whose_arguments_were_not_json(rig: Rig, letters: DeadLetters):
    """Arguments kept only as a repr are never evaluated: requeue refuses, the letter stays."""
    entry = letters.add(_letter(args="[<object at 0x1>]", args_json=None))
    result = rig.cli("dead-letters", "requeue", entry)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: dead letter {entry} not requeued: its args were not kept as JSON (not "
        "JSON-serialisable, or over 64 KiB), so they cannot be sent again as they were (the "
        "letter keeps only a capped repr)"
    )
    assert letters.get(entry) is not None
    shown = rig.cli("dead-letters", "show", entry)
    assert "requeue:       refused: arguments not kept as JSON" in shown.stdout


def test_purge_older_than_removes_only_old_letters(rig: Rig, letters: DeadLetters):
    """``purge --older-than`` drops letters older than the duration; ``purge`` drops all."""
    letters.client.xadd(letters.key, _letter(task_id="old").fields(), id="1000-0")  # type: ignore[arg-type]
    letters.add(_letter(task_id="new"))
    result = rig.cli("dead-letters", "purge", "--older-than", "1h", "--force")
    assert (result.returncode, result.stdout.strip()) == (0, "purged 1 dead letter")
    assert [x.task_id for x in letters.list()] == ["new"]

    declined = rig.cli("dead-letters", "purge")  # asks, and no one answers: nothing goes
    assert declined.returncode == 1
    assert letters.count() == 1
    assert rig.cli("dead-letters", "purge", "-f").stdout.strip() == "purged 1 dead letter"
    assert letters.count() == 0


def test_letters_and_names_from_task_input_are_escaped(rig: Rig, letters: DeadLetters):
    """What a publisher chose (task ID, arguments, causes) is printed escaped."""
    entry = letters.add(
        _letter(task_id="evil\x1b[2J", args="['\x07']", history=("#1 transient: \x1b]0;pwned\x07",))
    )
    for args in (["list"], ["show", entry]):
        result = rig.cli("dead-letters", *args)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
        assert "\x07" not in result.stdout
    assert "evil\\x1b[2J" in rig.cli("dead-letters", "show", entry).stdout


def test_bad_ids_and_durations_are_one_line_usage_errors(rig: Rig):
    """A malformed letter ID or duration: one line, exit 2."""
    bad_id = rig.cli("dead-letters", "show", "nope")
    assert (bad_id.returncode, bad_id.stderr.strip()) == (
        2,
        "Error: 'nope' is not a dead-letter ID (they look like 1730000000000-0)",
    )
    bad = rig.cli("dead-letters", "purge", "--older-than", "soon")
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "Error: 'soon' is not a duration such as 90s, 15m, 12h, 7d or 1h30m",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("0.5h", 1800.0),
    ],
)
def test_durations(text: str, seconds: float):
    """Durations read as operators write them."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "5y", "1h 30x", "1e3"])
def test_bad_durations(text: str):
    """Anything else is refused."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
