"""One run of the demo: set up, tell the story, report, and take everything down again."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from example_project.cluster import (
    PROJECT_ROOT,
    Cluster,
    ClusterError,
    delete_amqp_entities,
    delete_namespace,
    python_path_env,
    resilience_counters,
)
from example_project.embedded_redis import EmbeddedRedis
from example_project.howto import copy_commands
from example_project.monitor import BreakerWatch, Tracker
from example_project.processes import Children
from example_project.render import report_view
from example_project.report import build_report, side_of, trace_log
from example_project.story import APIS, Story, make_story
from example_project.teller import Teller
from example_project.upstream import Response, Upstream, UpstreamClient

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["DemoError", "Run"]

BUDGET = {True: 30.0, False: 90.0}
"""Seconds the whole demo may take, by ``--quick``."""
RESERVE = {True: 6.0, False: 9.0}
"""Seconds of the budget kept for stopping everything and reporting, by ``--quick``."""


class DemoError(RuntimeError):
    """The demo cannot go on (a service unreachable, a worker that did not start)."""


CONFIGURED = ("EXAMPLE_BROKER_URL", "EXAMPLE_RESULT_BACKEND", "EXAMPLE_STATE_URL")
"""The variables that configure the example project's servers (see example_project.app)."""
DEFAULTS = ("redis://localhost:6379/0", "redis://localhost:6379/1", "redis://localhost:6379/2")
"""Their defaults, as example_project.app has them."""
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class Run:
    """Everything one demo run starts, and how it stops it."""

    def __init__(self, args: argparse.Namespace, *, logs: Path, namespace: str,
                 private: bool) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.logs = logs
        self.namespace = namespace
        self.private = private
        self.started = time.monotonic()
        self.console = Console()
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            self.console.width = 120  # a log file or a pipe: room for the report's tables
        self.story: Story = make_story(quick=self.quick)
        self.redis: EmbeddedRedis | None = None
        self.upstream: Upstream | None = None
        self.controls: Upstream | UpstreamClient | None = None
        self.children = Children(logs)
        self.cluster: Cluster | None = None
        self.watch: BreakerWatch | None = None
        self.tracker: Tracker | None = None
        self.app: Celery | None = None
        self.urls: dict[str, str] = {}
        self._closed = False

    # -- setting up ----------------------------------------------------------------------

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def _redis_urls(self) -> tuple[str, str, str]:
        """Broker, result backend and state store: given, configured, or an embedded Redis.

        ``--redis-url`` serves all three; else the ``EXAMPLE_*`` variables of
        :mod:`example_project.app` when any is set (or when using running workers); else a
        private redis-server.
        """
        args, env = self.args, os.environ
        if args.redis_url:
            return args.broker_url or args.redis_url, args.redis_url, args.redis_url
        if args.workers == 0 or any(name in env for name in CONFIGURED):
            return (
                args.broker_url or env.get("EXAMPLE_BROKER_URL", DEFAULTS[0]),
                env.get("EXAMPLE_RESULT_BACKEND", DEFAULTS[1]),
                env.get("EXAMPLE_STATE_URL", DEFAULTS[2]),
            )
        self.redis = EmbeddedRedis().start()
        self._say(f"redis-server {self.redis.executable} on port {self.redis.port} "
                  f"(pid {self.redis.pid})")
        return args.broker_url or self.redis.url(0), self.redis.url(1), self.redis.url(2)

    def _infrastructure(self) -> None:
        broker_url, result_url, state_url = self._redis_urls()
        upstream_url = self.args.upstream_url or os.environ.get("EXAMPLE_UPSTREAM_URL")
        if upstream_url:
            client = UpstreamClient(upstream_url)
            if not client.healthy():
                raise DemoError(f"no upstream answers at {upstream_url}")
            self.controls, upstream_url = client, client.url
        else:
            self.upstream = Upstream().start()
            self.controls, upstream_url = self.upstream, self.upstream.url
        self.urls = {
            "EXAMPLE_BROKER_URL": broker_url,
            "EXAMPLE_RESULT_BACKEND": result_url,
            "EXAMPLE_STATE_URL": state_url,
            "EXAMPLE_UPSTREAM_URL": upstream_url,
            "EXAMPLE_NAMESPACE": self.namespace,
        }
        os.environ.update(self.urls)

    def _import(self) -> tuple[Celery, ModuleType, ModuleType]:
        from example_project import baseline, tasks  # noqa: PLC0415 - reads the env set above
        from example_project.app import app  # noqa: PLC0415

        self.app = app
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
            backend: Any = app.backend
            backend.client.ping()
        except Exception as exc:
            raise DemoError(f"cannot reach the broker or Redis: {exc}") from None
        return app, tasks, baseline

    def _start_cluster(self, app: Celery) -> None:
        from example_project.app import BASELINE_QUEUE, QUEUE  # noqa: PLC0415

        args = self.args
        env = {**self.urls, **python_path_env()}
        cluster = Cluster(self.children, env, self.namespace)
        self.cluster = cluster
        if args.workers:
            queues = [QUEUE] if args.skip_baseline else [QUEUE, BASELINE_QUEUE]
            cluster.start_workers(args.workers, concurrency=args.concurrency, queues=queues)
        if args.workers and not args.no_flower and not cluster.start_flower():
            self._say("(Flower is not installed: pip install flower, to watch the tasks there)")
        try:
            if args.workers:
                cluster.wait_ready(app)
                self._say(f"{args.workers} worker nodes ready: {', '.join(cluster.nodenames)}")
            elif not app.control.ping(timeout=2.0):
                raise DemoError("no worker answers in namespace " + self.namespace)
        except ClusterError as exc:
            raise DemoError(str(exc)) from None
        if cluster.flower_url and cluster.wait_flower(timeout=8.0 if self.quick else 15.0):
            self._say(f"Flower: {cluster.flower_url}")
        self._say(f"logs: {self.logs}")

    def _script_upstream(self) -> float:
        """Script every path of the story (both sides); return the story's start (epoch)."""
        controls = self.controls
        assert controls is not None
        controls.reset()
        t0 = time.time()
        sides = ("", "/baseline")
        for side in sides:
            for api in APIS:
                controls.phases(f"{side}/{api}", self.story.upstream_phases(api, Response(200)))
        for path, answer in dict(self.story.bad_paths()).items():
            for side in sides:
                controls.phases(f"{side}{path}", self.story.upstream_phases("billing", answer))
        return t0

    # -- the story -----------------------------------------------------------------------

    def _calls(self) -> dict[str, int]:
        assert self.controls is not None
        return dict(Counter(side_of(r.path) for r in self.controls.requests()))

    def _tell(self, app: Celery, tasks: ModuleType, baseline: ModuleType, t0: float) -> float:
        """Tell the story, showing progress; return when it ended (epoch)."""
        assert self.tracker is not None
        assert self.watch is not None
        teller = Teller(
            story=self.story,
            tasks={
                "rates": (tasks.fetch_rates, baseline.fetch_rates),
                "charge": (tasks.charge_invoice, baseline.charge_invoice),
                "crm": (tasks.sync_customer, baseline.sync_customer),
            },
            sides=["resilient"] if self.args.skip_baseline else ["resilient", "baseline"],
            tracker=self.tracker,
            watch=self.watch,
            count_calls=self._calls,
            t0=t0,
        )
        budget_end = self.started + BUDGET[self.quick] - RESERVE[self.quick]
        drain_from = self.story.scripted_seconds + self.story.recovery_sends
        live = Live(console=self.console, refresh_per_second=4) if self.console.is_terminal \
            else None
        phase = ""
        with live if live is not None else contextlib.nullcontext():
            while not teller.finished():
                if time.monotonic() >= budget_end and teller.elapsed >= drain_from:
                    break
                teller.step()
                if live is not None:
                    live.update(teller.view())
                elif self.story.phase_at(teller.elapsed).name != phase:
                    phase = self.story.phase_at(teller.elapsed).name
                    self._say(teller.line())
                time.sleep(0.05)
        if live is None:
            self._say(teller.line("end"))
        return time.time()

    def play(self) -> dict[str, Any]:
        """Set up, tell the story, stop the workers, and report; return the report."""
        self._infrastructure()
        app, tasks, baseline = self._import()
        self._start_cluster(app)
        assert self.cluster is not None
        nodes = self.cluster.nodenames or None
        self.tracker = Tracker(app)
        self.watch = BreakerWatch.for_app(app, (tasks.BILLING, tasks.CRM), tasks.CRM_RATE)
        self.watch.reset()  # running workers may have left them open in an earlier run
        before = resilience_counters(app, nodes) or {}
        startup = time.monotonic() - self.started
        t0 = self._script_upstream()
        story_end = self._tell(app, tasks, baseline, t0)
        after = resilience_counters(app, nodes)
        counters = {k: v - before.get(k, 0) for k, v in after.items()} if after else None
        pool = self.cluster.pool_pids(app) if self.cluster.workers else []
        if not self.args.hold:
            self._revoke_unfinished(app)
            self.cluster.stop()
        self.tracker.poll()
        assert self.controls is not None
        records = self.controls.requests()
        report = build_report(
            story=self.story, t0=t0, story_end=story_end, records=records,
            sent=self.tracker.sent, changes=self.watch.changes, counters=counters,
            timing={"startup": startup, "story": story_end - t0,
                    "total": time.monotonic() - self.started},
            quick=self.quick, skip_baseline=self.args.skip_baseline,
        )
        if report["trace"] is not None and report["trace"]["trace_id"]:
            report["trace"]["log"] = trace_log(self.logs, report["trace"]["trace_id"], t0)
        report["namespace"] = self.namespace
        report["processes"] = {
            "redis": self.redis.pid if self.redis is not None else None,
            "children": self.children.pids(),
            "pool": pool,
        }
        self.console.print(report_view(report, logs=str(self.logs)))
        if self.args.hold:
            self._hold()
        return report

    def _hold(self) -> None:
        url = self.cluster.flower_url if self.cluster is not None else None
        self._say("Holding on. In another terminal (bash or zsh), copy these to look at this "
                  "run's breakers, policy and dead letters:\n")
        for line in copy_commands(self.urls, root=PROJECT_ROOT, python=sys.executable):
            # one line each, however narrow the terminal: they are for copying
            self.console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        self._say("")
        if url:
            self._say(f"Flower: {url}")
        self._say("Ctrl-C here stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(0.5)

    def _revoke_unfinished(self, app: Celery) -> None:
        """Revoke what is still waiting, so that running workers do not go on calling."""
        if self.tracker is None or self.args.workers:
            return
        ids = [s.task_id for s in self.tracker.sent if not s.final]
        if ids:
            with contextlib.suppress(Exception):
                app.control.revoke(ids)

    # -- taking it down ------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this run started, by PID, and remove its namespace (bounded)."""
        if self._closed:
            return
        self._closed = True
        steps: list[Callable[[], object]] = [
            lambda: self.watch.close() if self.watch is not None else None,
            self._clean_namespace,
            lambda: self.upstream.stop() if self.upstream is not None else None,
            lambda: self.redis.stop() if self.redis is not None else None,
        ]
        self.children.stop_all()
        for step in steps:
            try:
                step()
            except Exception as exc:
                self.console.print(f"(while stopping: {exc})", highlight=False)

    def _clean_namespace(self) -> None:
        """Remove the run's keys and queues from servers that outlive it."""
        if not self.private or not self.args.workers or not self.urls:
            return
        from example_project.app import BASELINE_QUEUE, QUEUE  # noqa: PLC0415

        servers = [self.urls[name] for name in CONFIGURED]
        if not servers[0].startswith(REDIS_SCHEMES):
            delete_amqp_entities(servers[0], self.namespace, [QUEUE, BASELINE_QUEUE])
        if self.redis is None:
            for url in sorted({u for u in servers if u.startswith(REDIS_SCHEMES)}):
                delete_namespace(url, self.namespace)
