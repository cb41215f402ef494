"""``python -m example_project demo [options]``: see :mod:`example_project.demo`."""

from __future__ import annotations

import sys

USAGE = """usage: python -m example_project demo [--quick] [--skip-baseline] [options]

commands:
  demo        celery-resilience against plain Celery on a flaky-upstream story
              (python -m example_project demo --help for its options)

related:
  python -m example_project.upstream --port 8080    the flaky upstream on its own
  celery -A example_project.app worker              a worker of the example project
"""


def main(argv: list[str]) -> int:
    """Dispatch the one command."""
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] != "demo":
        print(f"unknown command {argv[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    from example_project.demo import main as demo  # noqa: PLC0415

    return demo(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
