"""Count the commands clients send to a Redis server, with ``MONITOR``.

``INFO commandstats`` also counts the commands that Lua scripts run inside the server, so
it cannot tell round trips apart; ``MONITOR`` marks those ``[0 lua]``. A monitor slows the
server, so it watches a run of its own, never a timed one::

    with ClientCommands(url) as seen:
        ...                         # the run
    seen.counts                     # Counter({"evalsha": 2000, "hello": 2, ...})
    seen.scripts                    # Counter({"<sha1 of gate.lua>": 2000, ...})
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from types import TracebackType

import redis

__all__ = ["ClientCommands"]


class ClientCommands:
    """Counts, by command name, what clients (not scripts) sent while it was open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        #: EVALSHA calls by script SHA1
        self.scripts: Counter[str] = Counter()
        self._sentinel = f"bench-monitor-stop-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        # no read timeout (redis-py's connections time out a read after 5 s by default):
        # a quiet server, as when gated attempts are granted ahead, is not a lost monitor
        self._client = redis.Redis.from_url(url, socket_timeout=None)
        self._thread = threading.Thread(target=self._watch, name="monitor", daemon=True)

    def _watch(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            while True:
                line = monitor.connection.read_response()
                if isinstance(line, bytes):
                    line = line.decode("utf-8", errors="replace")
                if not isinstance(line, str):
                    continue
                _, _, rest = line.partition(" [")
                source, _, command = rest.partition("] ")
                if self._sentinel in command:
                    return
                if source.endswith(" lua"):
                    continue
                words = command.split(" ", 2)
                name = words[0].strip('"').lower()
                self.counts[name] += 1
                if name == "evalsha" and len(words) > 1:
                    self.scripts[words[1].strip('"')] += 1

    def __enter__(self) -> ClientCommands:
        """Start watching (returns once the monitor is on)."""
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError(f"MONITOR did not start on {self.url}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop watching: a sentinel ECHO ends the loop (bounded wait)."""
        with redis.Redis.from_url(self.url) as other:
            other.echo(self._sentinel)
        self._thread.join(10.0)
        self._client.close()
