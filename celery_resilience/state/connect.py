"""Redis clients for the state store, from a URL: one server, a Cluster, or Sentinel.

=====================================================================  ======================
URL                                                                    client
=====================================================================  ======================
``redis://[user:password@]host:6379/1``, ``rediss://...`` (TLS),       one server
``unix:///run/redis.sock?db=1``
``redis+cluster://[user:password@]host:7000[,host:7001...]``           Redis Cluster
(``rediss+cluster://`` for TLS)                                        (any node to start)
``redis+sentinel://[user:password@]host:26379[,host:26380...]/         the primary that the
mymaster[/db][?sentinel_password=...]`` (``rediss+sentinel://``)       sentinels name
=====================================================================  ======================

The user and password are the data nodes'; ``sentinel_password`` (if any) is the
sentinels' own. Every client has short socket timeouts and reconnects once, quickly: a
state store that does not answer must not hold a task up (see the fallback).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

__all__ = ["SCHEMES", "Client", "LazyCluster", "connect", "describe", "is_cluster"]

#: The URL schemes the state store accepts.
SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


class LazyCluster:
    """A Redis Cluster client, built when first used.

    ``RedisCluster`` asks the nodes for the slot map as it is made, and raises
    ``RedisClusterException`` (a store error) when none answers: built lazily, a cluster
    that is away when a process starts is a store error at each use, handled like any
    other (the fallback), until it answers; then the client is built and kept.
    """

    def __init__(self, build: Callable[[], RedisCluster], hosts: list[tuple[str, int]]) -> None:
        self._build = build
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        #: the startup nodes, for log lines
        self.hosts = hosts

    def built(self) -> RedisCluster:
        """The cluster client (built now if it was not; raises when no node answers)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.built(), name)


Client = redis.Redis | RedisCluster | LazyCluster


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    userinfo, _, hostlist = netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    hosts = []
    for item in filter(None, hostlist.split(",")):
        if item.startswith("["):  # [::1]:7000
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        else:
            host, sep, number = item.partition(":")
            port = int(number) if sep else default_port
        hosts.append((host, port))
    if not hosts:
        raise ValueError("the state store URL names no host")
    return username, password, hosts


def connect(url: str, *, timeout: float = 2.0, ssl: dict[str, Any] | None = None) -> Client:
    """A client for ``url`` (see the module's table of schemes); ``ssl``: TLS options
    (``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``...)."""
    scheme = url.split("://", 1)[0].lower()
    url = _celery_cert_reqs(url)
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        # RESP2, whatever the redis-py release defaults to: the replies are read as RESP2,
        # and a Redis older than 6 (no HELLO) is still told apart by its version
        "protocol": 2,
    }
    if ssl and scheme.startswith("rediss"):
        common.update(ssl)
    if scheme in ("redis+cluster", "rediss+cluster"):
        parts = urlsplit(url)
        username, password, hosts = _hosts(parts.netloc, 6379)

        def build() -> RedisCluster:
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in hosts],  # type: ignore[no-untyped-call,unused-ignore]
                username=username,
                password=password,
                ssl=scheme.startswith("rediss"),
                **common,
            )

        return LazyCluster(build, hosts)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        parts = urlsplit(url)
        username, password, hosts = _hosts(parts.netloc, 26379)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a redis+sentinel URL names its service: .../mymaster[/db]")
        service, db = unquote(path[0]), int(path[1]) if len(path) > 1 else 0
        query = parse_qs(parts.query)
        sentinel_password = query.get("sentinel_password", [None])[0]
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            hosts,
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "password": sentinel_password,
            },
            username=username,
            password=password,
            db=db,
            ssl=scheme.startswith("rediss"),
            **common,
        )
        client: redis.Redis = sentinel.master_for(service)  # type: ignore[no-untyped-call,unused-ignore]
        return client
    single: redis.Redis = redis.Redis.from_url(url, health_check_interval=30, **common)
    return single


_CERT_REQS = {"cert_required": "required", "cert_optional": "optional", "cert_none": "none"}


def _celery_cert_reqs(url: str) -> str:
    """Celery writes ``ssl_cert_reqs=CERT_REQUIRED`` in Redis URLs; redis-py reads
    ``required``: accept both."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if name == "ssl_cert_reqs" and value.lower() in _CERT_REQS:
            value = _CERT_REQS[value.lower()]
        parts.append(f"{name}{eq}{value}")
    return f"{head}?{'&'.join(parts)}"


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client."""
    return isinstance(client, (RedisCluster, LazyCluster))


def describe(client: object) -> str:
    """Where a client points, without credentials, for log lines."""
    if isinstance(client, LazyCluster):
        return "cluster " + ",".join(sorted(f"{h}:{p}" for h, p in client.hosts)[:3])
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call,unused-ignore]
        return "cluster " + ",".join(sorted(f"{n.host}:{n.port}" for n in nodes)[:3])
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"sentinel service {service}/{kwargs.get('db', 0)}"
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
