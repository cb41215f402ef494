"""``celery -A proj resilience``: status and breaker commands against a real Redis and worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from celery_resilience import CircuitBreaker, RateLimit, resilient_task, signals
from celery_resilience.cli import render_status, resilience
from celery_resilience.core.gates import BreakerState, GateAsk
from celery_resilience.integration.inspection import UNDECLARED_TTL
from celery_resilience.state.keys import escape
from example_project.upstream import Upstream
from tests.helpers.celery_apps import make_app
from tests.helpers.inspection import ENV_PREFIX, OUTAGE, Rig, rig_fixture, run_cli
from tests.helpers.polling import wait_until
from tests.helpers.processes import free_port
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.integration


rig = rig_fixture("cli")


def _one_line_error(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


def test_status_shows_an_open_breaker_during_an_outage_and_reset_closes_it(
    rig: Rig, upstream: Upstream, unique: str
):
    """During an outage ``status`` shows the breaker OPEN (table and JSON); reset closes it."""
    upstream.script(f"/{unique}", [], then=503)
    client = rig.client()
    for i in range(3):
        client.send_task("inspect.outage", args=[f"/{unique}/{i}"])
    store = rig.store
    wait_until(
        lambda: store.breaker(OUTAGE).state is BreakerState.OPEN,
        timeout=20,
        what="the breaker opens",
    )

    result = rig.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"breakers", "limiters", "dead_letters"}
    row = next(b for b in data["breakers"] if b["name"] == "inspect-outage")
    assert row["state"] == "open"
    assert row["open_until"] > data["now"]
    assert (row["calls"], row["failures"], row["failure_rate"]) == (3, 3, 1.0)
    assert row["tasks"] == ["inspect.outage"]
    assert {b["name"]: b["state"] for b in data["breakers"]}["upstream"] == "closed"
    limiter = next(x for x in data["limiters"] if x["name"] == "api")
    assert (limiter["rate"], limiter["concurrency"], limiter["in_use"]) == ("10/s", 3, 0)
    assert limiter["wait"] == 0.0
    assert limiter["paused_until"] is None
    assert data["dead_letters"]["count"] == 0

    table = rig.cli("status")
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith("inspect-outage"))
    assert line.split()[1:4] == ["open", "100%", "3/3"]
    assert " in " in line

    reset = rig.cli("breaker", "reset", "inspect-outage")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.strip() == "breaker 'inspect-outage': closed (was open)"
    after = json.loads(rig.cli("status", "--json").stdout)
    row = next(b for b in after["breakers"] if b["name"] == "inspect-outage")
    assert (row["state"], row["calls"], row["open_until"]) == ("closed", 0, None)


def test_open_and_close_force_a_breaker_until_reset(rig: Rig):
    """``breaker open`` forces it open, ``close`` forces it closed, ``reset`` ends both."""
    assert rig.cli("breaker", "open", "upstream").stdout.splitlines() == [
        "breaker 'upstream': forced_open (was closed)",
        "it stays open until `resilience breaker reset upstream`",
    ]
    assert rig.cli("breaker", "close", "upstream").stdout.splitlines() == [
        "breaker 'upstream': forced_closed (was forced_open)",
        "it stays closed, whatever fails, until `resilience breaker reset upstream`",
    ]
    assert rig.store.breaker(CircuitBreaker("upstream")).state is BreakerState.FORCED_CLOSED
    assert rig.cli("breaker", "reset", "upstream").stdout.strip() == (
        "breaker 'upstream': closed (was forced_closed)"
    )


def test_names_only_redis_holds_are_listed_escaped_and_can_be_reset(rig: Rig):
    """A breaker no task declares but Redis holds is listed (escaped) and can be reset."""
    store = rig.store
    store.breaker(CircuitBreaker("legacy café"), "open")
    evil = "\x1b[31mred\x1b[0m"
    state_key = f"{rig.prefix}:breaker:{{{escape(evil)}}}:state"
    store.client.hset(state_key, mapping={"st": "open", "ou": "0"})

    table = rig.cli("status")
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout + table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith("legacy\\x20caf\\xe9 "))
    assert line.split()[1] == "forced_open"
    assert "no (Redis only)" in table.stdout
    assert "\\x1b[31mred\\x1b[0m" in table.stderr  # control characters: not a breaker name

    data = json.loads(rig.cli("status", "--json").stdout)
    names = {b["name"]: b for b in data["breakers"]}
    assert names["legacy café"]["declared"] is False
    assert evil not in names

    reset = rig.cli("breaker", "reset", "legacy café")
    assert reset.returncode == 0, reset.stderr
    assert store.breaker(CircuitBreaker("legacy café")).state is BreakerState.CLOSED


def test_a_state_hash_the_cli_writes_for_an_undeclared_name_expires(rig: Rig, unique: str):
    """``breaker open`` on a name only Redis knows (a typo matching stale state, or a
    breaker of another app) gives the state hash a time to live, so it cannot stay
    forever; a worker whose task declares the name takes it over (the TTL goes)."""
    store = rig.store
    name = f"ghost-{unique}"
    state_key, window_key, _ = store.keys.breaker(name)
    seconds, _ = store.client.time()
    store.client.hset(window_key, f"{seconds * 1000}:f", 1)  # stale state: Redis knows it
    store.client.pexpire(window_key, 60_000)

    opened = rig.cli("breaker", "open", name)
    assert opened.returncode == 0, opened.stderr
    ttl = store.client.pttl(state_key)
    assert 0 < ttl <= UNDECLARED_TTL * 1000

    declared = rig.cli("breaker", "open", "upstream")  # a task of the app declares it
    assert declared.returncode == 0, declared.stderr
    assert store.client.pttl(store.keys.breaker("upstream")[0]) == -1
    rig.cli("breaker", "reset", "upstream")

    store.gate(GateAsk(holder=f"h-{unique}", breaker=CircuitBreaker(name)))
    assert store.client.pttl(state_key) == -1  # a worker using the breaker keeps it


def test_a_breaker_nobody_knows_is_one_line_and_exit_1(rig: Rig):
    """A name neither the app nor Redis knows: one line on stderr, exit 1, nothing written."""
    result = rig.cli("breaker", "open", "nosuch")
    assert result.returncode == 1
    assert _one_line_error(result) == (
        f"Error: no breaker 'nosuch': no task of this app declares it and the state store "
        f"holds nothing for it under prefix '{rig.prefix}'"
    )
    assert not rig.store.breaker(CircuitBreaker("nosuch")).exists
    bad = rig.cli("breaker", "open", "a\nb")
    assert bad.returncode == 2
    assert _one_line_error(bad) == "Error: 'a\\x0ab' cannot name a breaker"


def test_unreachable_store_is_one_line_and_exit_69(unique: str):
    """With Redis down, every command says so in one line and exits 69, no traceback."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"RESILIENCE_TEST_BROKER": url, "RESILIENCE_TEST_PREFIX": f"t-{unique}"}
    for args in (["status"], ["breaker", "reset", "upstream"], ["dead-letters", "list"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 69, (args, result.stderr)
        line = _one_line_error(result)
        assert line.startswith(f"Error: state store {url[8:]} unreachable (ConnectionError: ")


def test_no_redis_configured_is_one_line_and_exit_78():
    """An app whose broker and backend are not Redis: the settings error, in one line."""
    result = run_cli("status", env={"RESILIENCE_TEST_BROKER": "memory://"})
    assert result.returncode == 78
    assert "resilience_backend_url" in _one_line_error(result)


@pytest.fixture
def local_app(redis_server: RedisServer, unique: str) -> Iterator[Any]:
    """An app in this process with one breaker and one rate limit, on its own prefix."""
    app = make_app(
        "local", broker=redis_server.url(0), backend=None, queue=f"q-{unique}", set_as_current=False
    )
    app.conf.resilience_key_prefix = f"t-{unique}"

    @resilient_task(
        app=app,
        name=f"local.pay-{unique}",
        breaker=CircuitBreaker("pay"),
        limiter=RateLimit("pay", "5/s"),
    )
    def pay() -> None:
        """Declares the breaker and the limiter."""

    yield app
    app.close()


def test_transitions_the_command_causes_are_signalled_in_its_process(local_app: Any):
    """``breaker open`` sends ``breaker_state_changed`` in the process that ran it."""
    seen: list[tuple[str, BreakerState, BreakerState]] = []

    def receiver(name: str, old: BreakerState, new: BreakerState, **_: Any) -> None:
        seen.append((name, old, new))

    signals.breaker_state_changed.connect(receiver)
    try:
        runner = CliRunner()
        obj = CLIContext(app=local_app, no_color=True, workdir=None)
        result = runner.invoke(resilience, ["breaker", "open", "pay"], obj=obj)
        assert result.exit_code == 0, result.output
        result = runner.invoke(resilience, ["breaker", "reset", "pay"], obj=obj)
        assert result.exit_code == 0, result.output
    finally:
        signals.breaker_state_changed.disconnect(receiver)
    assert seen == [
        ("pay", BreakerState.CLOSED, BreakerState.FORCED_OPEN),
        ("pay", BreakerState.FORCED_OPEN, BreakerState.CLOSED),
    ]


def test_status_of_an_app_with_nothing_in_redis_lists_its_declarations(local_app: Any):
    """Declared breakers and limiters are listed even before Redis holds anything."""
    result = CliRunner().invoke(
        resilience, ["status", "--json"], obj=CLIContext(app=local_app, no_color=True, workdir=None)
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(b["name"], b["state"], b["declared"]) for b in data["breakers"]] == [
        ("pay", "closed", True)
    ]
    assert [(x["name"], x["rate"], x["concurrency"]) for x in data["limiters"]] == [
        ("pay", "5/s", None)
    ]
    assert data["store"]["found"] is False
    text = render_status(data)
    assert "Breakers (1)" in text
    assert "Limiters (1)" in text
    assert text.endswith("Dead letters: 0")
    prefix = data["store"]["prefix"]
    assert text.splitlines()[1].startswith(f"Found nothing under prefix {prefix!r}")


def test_a_wrong_prefix_says_it_found_nothing_there(rig: Rig):
    """With the workers' prefix ``status`` shows their state; with another it says that it
    found nothing there, instead of a healthy-looking empty store."""
    rig.store.breaker(CircuitBreaker("upstream"), "close")  # state under the workers' prefix
    try:
        right = rig.cli("status")
        assert right.returncode == 0, right.stderr
        assert "Found nothing" not in right.stdout
        assert json.loads(rig.cli("status", "--json").stdout)["store"]["found"] is True
    finally:
        rig.store.breaker(CircuitBreaker("upstream"), "reset")
    wrong = rig.cli("status", env={ENV_PREFIX: "no-such-namespace"})
    assert wrong.returncode == 0, wrong.stderr
    assert "Found nothing under prefix 'no-such-namespace'" in wrong.stdout
    data = json.loads(rig.cli("status", "--json", env={ENV_PREFIX: "no-such-namespace"}).stdout)
    assert data["store"] == {**data["store"], "prefix": "no-such-namespace", "found": False}


def test_breaker_help_says_open_and_close_pin_it_until_reset():
    """``breaker --help`` says that open and close last until reset."""
    result = run_cli("breaker", "--help", env={"RESILIENCE_TEST_BROKER": "memory://"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Pin the breaker NAME open or closed until `reset`" in text
    assert "pin it closed: every call goes through, whatever fails" in text


def test_help_lists_the_subcommands():
    """``celery resilience --help`` is reachable through the entry point."""
    result = run_cli("--help", env={"RESILIENCE_TEST_BROKER": "memory://"})
    assert result.returncode == 0, result.stderr
    for command in ("status", "breaker", "dead-letters", "parked"):
        assert command in result.stdout


@given(st.text(min_size=1, max_size=40))
def test_any_name_is_printed_as_printable_ascii(name: str):
    """Whatever a key or a task names, the table holds printable ASCII and newlines only."""
    row = {"name": name, "declared": False}
    data = {
        "store": {"address": "127.0.0.1:6379/0", "prefix": "p"},
        "now": 0.0,
        "breakers": [
            {
                **row,
                "state": "closed",
                "failure_rate": 0.0,
                "calls": 0,
                "failures": 0,
                "open_until": None,
            }
        ],
        "limiters": [
            {
                **row,
                "rate": None,
                "wait": 0.0,
                "in_use": 0,
                "concurrency": None,
                "paused_until": None,
            }
        ],
        "dead_letters": {"count": 0},
    }
    assert all(ch == "\n" or " " <= ch <= "~" for ch in render_status(data))
