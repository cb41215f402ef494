"""``python -m example_project demo``: one story, told twice, side by side.

The demo starts a private Redis (unless given one), the flaky upstream, two worker nodes
and Flower; then it plays :mod:`example_project.story` against the resilient tasks of
:mod:`example_project.tasks` and the plain-Celery tasks of :mod:`example_project.baseline`
at once, shows their progress live, and closes with a report counted from the upstream's
own request log. Everything it starts is stopped by PID, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main", "parse_args"]


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM or SIGHUP arrived: stop as Ctrl-C does."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m example_project demo",
        description="celery-resilience against plain Celery on one flaky-upstream story.",
    )
    parser.add_argument("--quick", action="store_true", help="a shorter story (<= 30 s)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="run the resilient tasks only (no plain-Celery comparison)")
    parser.add_argument("--redis-url", help="a Redis for broker, results and state (default: "
                        "$EXAMPLE_*_URL when set, else a private redis-server on a free port)")
    parser.add_argument("--broker-url", help="another broker, e.g. amqp://guest:guest@"
                        "127.0.0.1:5672// (default: the Redis)")
    parser.add_argument("--upstream-url", help="script this running upstream (python -m "
                        "example_project.upstream; default: $EXAMPLE_UPSTREAM_URL when set) "
                        "instead of starting one")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker nodes to start (2); 0 uses workers already running")
    parser.add_argument("--concurrency", type=int, default=4, help="pool size per node (4)")
    parser.add_argument("--namespace", help="prefix of queues and keys (default: a fresh "
                        "private one; with --workers 0: $EXAMPLE_NAMESPACE or 'example')")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    parser.add_argument("--hold", action="store_true",
                        help="after the report, keep workers and Flower up until Ctrl-C")
    parser.add_argument("--report-json", type=Path, help="also write the report here")
    parser.add_argument("--logs", type=Path, help="directory for the logs (default: a new "
                        "temporary one, kept)")
    args = parser.parse_args(argv)
    if args.workers < 0 or args.concurrency < 1:
        parser.error("--workers must be >= 0 and --concurrency >= 1")
    return args


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals(handler: Any, signals: Sequence[signal.Signals]) -> Iterator[None]:
    """Set ``handler`` for ``signals`` inside the block; restore the old ones after it."""
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (0, or 130 when interrupted)."""
    args = parse_args(argv)
    try:
        import rich  # noqa: F401, PLC0415
    except ImportError:
        print("the demo needs rich: pip install 'celery-resilience[example]'", file=sys.stderr)
        return 1
    from example_project.embedded_redis import RedisNotFoundError  # noqa: PLC0415
    from example_project.run import DemoError, Run  # noqa: PLC0415

    logs = args.logs or Path(tempfile.mkdtemp(prefix="celery-resilience-demo-"))
    namespace = args.namespace or (
        os.environ.get("EXAMPLE_NAMESPACE", "example") if args.workers == 0
        else f"demo-{secrets.token_hex(3)}"
    )
    run = Run(args, logs=logs, namespace=namespace, private=args.namespace is None)
    report: dict[str, Any] | None = None
    status = 0
    try:
        # Ctrl-C stops the run even when it was started with SIGINT ignored (a background
        # job of a shell without job control passes that on)
        with _signals(signal.default_int_handler, (signal.SIGINT,)), \
                _signals(_on_signal, _STOP_SIGNALS):
            report = run.play()
    except (KeyboardInterrupt, Stopped) as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}): stopping everything", file=sys.stderr)
        status = 130
    except RedisNotFoundError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        status = 2
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        status = 1
    finally:
        # stopping is bounded: let no second Ctrl-C cut it short and leave processes behind
        with _signals(signal.SIG_IGN, (signal.SIGINT, *_STOP_SIGNALS)):
            run.close()
    if report is not None and args.report_json is not None:
        args.report_json.write_text(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
