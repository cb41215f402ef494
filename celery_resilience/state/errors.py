"""What a state store that cannot be reached (or cannot serve) raises: one tuple for all.

redis-py's Cluster errors (``RedisClusterException``, ``SlotNotCoveredError``) do not
derive from ``RedisError``, so catching ``RedisError`` alone lets a cluster that is down
slip past every fail-open path; everything that talks to the store catches this tuple.
"""

from __future__ import annotations

from redis.exceptions import RedisClusterException, RedisError

__all__ = ["STORE_ERRORS"]

#: Errors of an unreachable or failing state store (a single server, Sentinel or Cluster).
STORE_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    ConnectionError,
    TimeoutError,
)
