"""This process's ID and fresh random IDs, read without a system call per attempt.

Both are kept right across ``os.fork`` by an at-fork hook (Celery's prefork pool,
multiprocessing and gunicorn fork with it): a child learns its own ID, and its random
IDs start from fresh entropy, so two pool processes never hand out the same sequence.
A server that forks its workers from C without running Python's at-fork hooks (uWSGI
without ``lazy-apps`` or ``py-call-osafterfork``) leaves them, as it leaves :mod:`random`,
with their parent's values. The generator is this module's own: a task that seeds
:mod:`random` for its own reasons does not make span IDs repeat.
"""

from __future__ import annotations

import os
import random

__all__ = ["pid", "random_bits"]

_pid = os.getpid()
_random = random.Random()  # noqa: S311 - IDs, not secrets; seeded from the OS's entropy


def _forked() -> None:
    global _pid  # noqa: PLW0603 - one value per process, by design
    _pid = os.getpid()
    _random.seed()


if hasattr(os, "register_at_fork"):  # no fork, nothing to renew, where it is missing
    os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's ID (as ``os.getpid()``, kept by a fork hook instead of asked)."""
    return _pid


def random_bits(bits: int) -> int:
    """A random non-negative integer of at most ``bits`` bits (not for secrets)."""
    return _random.getrandbits(bits)
