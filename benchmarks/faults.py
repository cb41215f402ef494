"""The faults of the reliability table: how each is set up, scripted and injected.

Each fault runs on a :class:`~benchmarks.stack.Stack` of its own (fresh servers and
nodes). ``script`` tells the upstream how to answer the run's tasks (paths under
``prefix``); ``inject`` waits (bounded) for the moment the fault is meant for, injects it,
and returns how many faults it injected. Waits are polled on the upstream's records.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.stack import Spec, Stack
from example_project.upstream import Response, Upstream
from tests.helpers.polling import wait_until
from tests.helpers.rabbitmq import RabbitMQNode
from tests.helpers.redis_cluster import RedisCluster
from tests.helpers.redis_server import RedisServer

__all__ = ["FAULTS", "Fault"]

#: Unacknowledged messages come back after 10 s (kombu's Redis transport sweeps every second).
QUICK_VISIBILITY = {
    "visibility_timeout": 10,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
#: At-least-once delivery: a message is acknowledged after its body, and put back when the
#: pool process running it dies.
ACKS_LATE = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "broker_transport_options": QUICK_VISIBILITY,
}
OUTAGE = 4.0  # seconds of 503 in the faults that need tasks retrying


@dataclass(frozen=True)
class Fault:
    """One row of the table."""

    key: str
    title: str
    spec: Spec
    script: Callable[[Upstream, str, int], None]
    inject: Callable[[Stack, Upstream, str], int]
    #: seconds the tasks get to reach a final state once the fault is over
    drain: float = 45.0
    conf_note: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _count(upstream: Upstream, prefix: str) -> int:
    return sum(1 for r in upstream.requests() if r.path.startswith(prefix + "/"))


def _after_calls(upstream: Upstream, prefix: str, calls: int, timeout: float = 60.0) -> None:
    wait_until(
        lambda: _count(upstream, prefix) >= calls,
        timeout=timeout, interval=0.05, what=f"{calls} calls under {prefix}",
    )  # fmt: skip


# -- scripts -------------------------------------------------------------------------------


def _slow_first(upstream: Upstream, prefix: str, tasks: int) -> None:
    for i in range(tasks):
        upstream.script(f"{prefix}/t{i}", [Response.slow(1.5)], then=200)


def _outage(upstream: Upstream, prefix: str, tasks: int) -> None:
    upstream.phases(prefix, [(OUTAGE, 503), (None, 200)])


def _slow_recovery(upstream: Upstream, prefix: str, tasks: int) -> None:
    upstream.phases(prefix, [(OUTAGE, 503), (None, Response.slow(3.0))])


def _steady(upstream: Upstream, prefix: str, tasks: int) -> None:
    upstream.script(prefix, [], then=Response.slow(0.3))


def _retry_after(upstream: Upstream, prefix: str, tasks: int) -> None:
    upstream.phases(prefix, [(3.0, Response(429, retry_after=3)), (None, 200)])


# -- injections ----------------------------------------------------------------------------


def _kill_pool_processes(stack: Stack, upstream: Upstream, prefix: str) -> int:
    """Twice, SIGKILL one pool process of each node while the bodies wait on the upstream."""
    killed = 0
    for round_ in range(2):
        _after_calls(upstream, prefix, 4 + 6 * round_)
        for worker in stack.workers[:2]:
            children = worker.child_pids()
            if children:
                os.kill(children[0], signal.SIGKILL)
                killed += 1
        time.sleep(0.5)  # the node forks a replacement before the next round
    return killed


def _retrying(upstream: Upstream, prefix: str) -> None:
    """Once the first answers were 503 and a second has passed: retries are in flight."""
    _after_calls(upstream, prefix, 5)
    time.sleep(1.0)


def _kill_node(stack: Stack, upstream: Upstream, prefix: str) -> int:
    """SIGKILL the second node (main process and pool) while tasks retry."""
    _retrying(upstream, prefix)
    stack.kill_node(stack.workers[1])
    return 1


def _restart_broker(stack: Stack, upstream: Upstream, prefix: str) -> int:
    """The broker goes away while tasks retry and comes back (Redis: SIGKILL, 3 s, start
    again from its append-only file; RabbitMQ: stopped and started, durable queues kept)."""
    _retrying(upstream, prefix)
    if isinstance(stack.broker, RabbitMQNode):
        stack.broker.restart()
    else:
        stack.broker.kill()
        time.sleep(3.0)
        stack.broker.restart()
    return 1


def _state_outage(stack: Stack, upstream: Upstream, prefix: str) -> int:
    """Mid-run, the state store goes away: a Redis is SIGKILLed and started again (empty)
    3 s later; of a Cluster, one of the three primaries is stopped for 4 s."""
    _after_calls(upstream, prefix, 8)
    if isinstance(stack.state, RedisCluster):
        node = stack.state.nodes[1]
        node.stop()
        time.sleep(4.0)
        node.start()
    else:
        stack.state.kill()
        time.sleep(3.0)
        stack.state.restart()
    return 1


def _deny_publish(stack: Stack, upstream: Upstream, prefix: str) -> int:
    """Deny the workers' broker user LPUSH (every publish) for 3 s while tasks retry."""
    assert isinstance(stack.broker, RedisServer)
    _retrying(upstream, prefix)
    with stack.broker.client() as admin:
        admin.acl_setuser("worker", enabled=True, commands=["-lpush"])
        time.sleep(3.0)
        admin.acl_setuser("worker", enabled=True, commands=["+lpush"])
    return 1


def _nothing(stack: Stack, upstream: Upstream, prefix: str) -> int:
    return 1  # the upstream's script is the fault


def _one_per_task(stack: Stack, upstream: Upstream, prefix: str) -> int:
    _after_calls(upstream, prefix, 1)
    return 0  # counted from the upstream's records afterwards


FAULTS: tuple[Fault, ...] = (
    Fault("pool_kill", "pool process SIGKILL mid-body", Spec(conf=ACKS_LATE),
          _slow_first, _kill_pool_processes, conf_note="acks_late, reject_on_worker_lost"),
    Fault("node_kill", "worker node SIGKILL while tasks retry", Spec(conf=ACKS_LATE),
          _outage, _kill_node, conf_note="acks_late, reject_on_worker_lost"),
    Fault("redis_broker", "Redis broker SIGKILL and restart (AOF) while tasks retry",
          Spec(aof=True, conf=ACKS_LATE), _outage, _restart_broker,
          conf_note="acks_late, reject_on_worker_lost"),
    Fault("rabbitmq_broker", "RabbitMQ node restart while tasks retry",
          Spec(broker="amqp", conf={"task_acks_late": True}), _outage, _restart_broker,
          conf_note="acks_late"),
    Fault("state_kill", "state-store Redis SIGKILL, restarted empty 3 s later", Spec(),
          _steady, _state_outage, conf_note="defaults (fallback allow)"),
    Fault("cluster_node", "Redis Cluster state store: a primary stopped for 4 s",
          Spec(state="cluster"), _steady, _state_outage, conf_note="defaults"),
    Fault("outage", f"upstream outage (503 for {OUTAGE:g} s) with the breaker", Spec(),
          _outage, _nothing, conf_note="defaults"),
    Fault("slow_recovery", f"upstream outage ({OUTAGE:g} s), then answers taking 3 s "
          "(longer than the breaker's open_for, 2 s)", Spec(), _slow_recovery, _nothing,
          drain=90.0, conf_note="defaults"),
    Fault("retry_after", "429 with Retry-After: 3 to every call for 3 s", Spec(),
          _retry_after, _one_per_task, conf_note="defaults"),
    Fault("publish_denied", "retry publish fails: LPUSH denied by ACL for 3 s",
          Spec(acl=True), _outage, _deny_publish, conf_note="defaults (acks early)"),
)  # fmt: skip
