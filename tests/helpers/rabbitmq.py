"""A private RabbitMQ node on free 127.0.0.1 ports, for tests that restart a broker or need
a configuration of their own (a ``consumer_timeout`` of seconds).

Never the shared broker on 5672: each :class:`RabbitMQNode` has its own node name, data,
log and HOME directories (so its own Erlang cookie), its own ``epmd`` on a free port and
its own ``rabbitmq.conf``; everything it starts is stopped by PID::

    with RabbitMQNode(consumer_timeout=5.0) as node:
        kombu.Connection(node.url)...
        node.restart()       # the whole node stops and starts again (durable queues stay)
        node.ctl("list_queues")   # rabbitmqctl -n <this node> ...

Where ``rabbitmq-server`` (or ``epmd``) is not installed, :func:`find_rabbitmq` skips the
test with the reason, or fails it when ``REQUIRE_RABBITMQ=1``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import amqp
import amqp.exceptions

from tests.helpers.brokers import unavailable
from tests.helpers.processes import (
    LoggedProcess,
    free_port,
    has_exited,
    kill_group,
    tail,
    wait_exited,
)

__all__ = ["HOST", "RabbitMQInstall", "RabbitMQNode", "RabbitMQStartError", "find_rabbitmq"]

HOST = "127.0.0.1"
#: Where Debian and Ubuntu keep the real scripts (``/usr/sbin/rabbitmq-server`` is a wrapper
#: that switches to the ``rabbitmq`` user when run as root).
_DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


class RabbitMQStartError(RuntimeError):
    """The node did not come up."""


@dataclass(frozen=True)
class RabbitMQInstall:
    """The programs a private node needs."""

    server: Path
    ctl: Path
    epmd: Path


def _locate() -> RabbitMQInstall | str:
    """The installed programs, or why a private node cannot be started."""
    scripts = _DEBIAN_SCRIPTS if (_DEBIAN_SCRIPTS / "rabbitmq-server").exists() else None
    if scripts is None:
        found = shutil.which("rabbitmq-server")
        if found is None:
            return "rabbitmq-server is not installed (not on PATH)"
        scripts = Path(found).resolve().parent
    ctl = scripts / "rabbitmqctl"
    if not ctl.exists():
        return f"rabbitmqctl is not beside rabbitmq-server in {scripts}"
    epmd = shutil.which("epmd")
    if epmd is None:
        return "epmd (Erlang's port mapper) is not on PATH"
    return RabbitMQInstall(server=scripts / "rabbitmq-server", ctl=ctl, epmd=Path(epmd))


def find_rabbitmq() -> RabbitMQInstall:
    """Return the installed programs; else skip, or fail when REQUIRE_RABBITMQ=1."""
    found = _locate()
    if isinstance(found, str):
        unavailable(f"cannot start a private RabbitMQ node: {found}")
    return found


class RabbitMQNode(LoggedProcess):
    """A RabbitMQ node of our own.

    ``consumer_timeout`` (seconds) goes to its ``rabbitmq.conf``; ``tick_interval`` (seconds;
    ``None``: RabbitMQ's one minute) is how often each channel checks it; ``config`` lines
    are appended to ``rabbitmq.conf`` as they are.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        consumer_timeout: float | None = None,
        tick_interval: float | None = None,
        config: tuple[str, ...] = (),
        startup_timeout: float = 120.0,
    ) -> None:
        self.install = find_rabbitmq()
        self.consumer_timeout = consumer_timeout
        self.tick_interval = tick_interval
        self.config = config
        self.startup_timeout = startup_timeout
        self.nodename = f"rmq-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self._directory = directory
        self._owned_directory: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    # -- where things are ----------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The node's directory (created on first start if none was given)."""
        if self._directory is None:
            self._owned_directory = Path(tempfile.mkdtemp(prefix="rabbitmq-node-"))
            self._directory = self._owned_directory
        return self._directory

    @property
    def logfile(self) -> Path:
        """The server's output (RabbitMQ logs to it too)."""
        return self.directory / "server.log"

    @property
    def pid(self) -> int | None:
        """The PID of the ``rabbitmq-server`` script (the Erlang VM is its child, in its
        process group) while it runs."""
        return None if self._server is None else self._server.pid

    @property
    def epmd_pid(self) -> int | None:
        """The PID of this node's ``epmd`` while it runs."""
        return None if self._epmd is None else self._epmd.pid

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>//`` (guest may log in from loopback)."""
        return f"amqp://guest:guest@{HOST}:{self.port}//"

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of ``rabbitmqctl`` aimed at it."""
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d / "home"),  # the Erlang cookie lives here, ours alone
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),  # not the system's
        }

    # -- control -------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <this node> <args>``; return its output (raise on failure)."""
        done = subprocess.run(
            [str(self.install.ctl), "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def start(self) -> RabbitMQNode:
        """Start the node on free ports and wait until it accepts AMQP connections."""
        if self._server is not None:
            return self
        if self.port:
            self._launch()
            return self
        for attempt in range(3):  # a free port can be taken between our check and its bind
            self.port, self.dist_port, self.epmd_port = _free_ports(3)
            try:
                self._launch()
            except RabbitMQStartError:
                if attempt == 2:
                    raise
            else:
                return self
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node by PID (SIGTERM: a clean shutdown; SIGKILL to its process group
        after ``timeout``), then its ``epmd``; remove a directory we made."""
        self._stop_server(signal.SIGTERM, timeout)
        self._stop_epmd()
        if self._owned_directory is not None:
            shutil.rmtree(self._owned_directory, ignore_errors=True)
            self._owned_directory = self._directory = None

    def pause(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (SIGTERM: its messages are on disk), keeping its data and
        ports (fault injection: a broker away); :meth:`restart` brings it back."""
        self._stop_server(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the node (fault injection); :meth:`restart` brings it back."""
        self._stop_server(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop the node if it runs (cleanly), then start it again on the same ports with
        the same data (durable queues and persistent messages survive)."""
        self._stop_server(signal.SIGTERM, timeout)
        self._launch()

    # -- inside --------------------------------------------------------------------------

    def _write_config(self) -> None:
        d = self.directory
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"listeners.tcp.default = {HOST}:{self.port}", "loopback_users.guest = true"]
        if self.consumer_timeout is not None:
            lines.append(f"consumer_timeout = {round(self.consumer_timeout * 1000)}")
        lines.extend(self.config)
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        rabbit = []
        if self.tick_interval is not None:
            rabbit.append(f"{{channel_tick_interval, {round(self.tick_interval * 1000)}}}")
        (d / "advanced.config").write_text(f"[{{rabbit, [{', '.join(rabbit)}]}}].\n")
        (d / "enabled_plugins").write_text("[].\n")  # no management listener on 15672
        (d / "rabbitmq-env.conf").write_text("")

    def _launch(self) -> None:
        self._write_config()
        env = self.env()
        if self._epmd is None:
            self._epmd = subprocess.Popen(
                [str(self.install.epmd), "-port", str(self.epmd_port), "-address", HOST],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            # the VM would start an epmd of its own (a daemon we could not stop by PID)
            # if ours were not listening yet
            self._wait_listening(self.epmd_port, self._epmd, "epmd", timeout=10.0)
        with self.logfile.open("ab") as output:
            self._server = subprocess.Popen(
                [str(self.install.server)],
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the VM and its helpers
            )
        try:
            self._wait_for_amqp()
        except RabbitMQStartError:
            self._stop_server(signal.SIGKILL, 10.0)
            self._stop_epmd()
            raise

    def _wait_listening(
        self, port: int, process: subprocess.Popen[bytes], what: str, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RabbitMQStartError(f"{what} on port {port} exited ({process.returncode})")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                return
            time.sleep(0.05)
        raise RabbitMQStartError(f"{what} did not listen on port {port} within {timeout:g} s")

    def _wait_for_amqp(self) -> None:
        assert self._server is not None
        deadline = time.monotonic() + self.startup_timeout
        problem = f"did not accept an AMQP connection within {self.startup_timeout:g} s"
        while time.monotonic() < deadline:
            if has_exited(self._server.pid):
                problem = "exited"
                break
            try:
                connection = amqp.Connection(
                    f"{HOST}:{self.port}", userid="guest", password="guest", connect_timeout=1
                )
                connection.connect()
            except (OSError, amqp.exceptions.AMQPError):
                time.sleep(0.2)  # not listening yet, or still booting
            else:
                connection.close()
                return
        raise RabbitMQStartError(
            f"RabbitMQ node {self.nodename} on port {self.port} {problem}; "
            f"log {self.logfile}:\n{tail(self.logfile)}"
        )

    def _stop_server(self, sig: signal.Signals, timeout: float) -> None:
        process, self._server = self._server, None
        if process is None:
            return
        pid = process.pid  # not reaped until the end: its group id stays ours meanwhile
        if not has_exited(pid):
            if sig == signal.SIGKILL:
                kill_group(pid)  # the script, the VM and its helpers
            else:
                os.kill(pid, sig)  # the script passes it on to the VM: a clean shutdown
        wait_exited(pid, timeout)
        kill_group(pid)  # whatever is left of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)

    def _stop_epmd(self) -> None:
        process, self._epmd = self._epmd, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)
