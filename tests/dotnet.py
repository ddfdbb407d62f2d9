"""A TickerQ .NET node, emulated from the storage layout, for interoperability tests.

``RedisCache`` does what Microsoft.Extensions.Caching.StackExchangeRedis's ``RedisCache``
does on the wire: ``Set`` pipelines ``HSET key absexp <ticks|-1> sldexp <ticks|-1> data
<bytes>`` and ``EXPIRE key <whole seconds>`` (the smaller of the time left to the absolute
expiry and the sliding expiration, cut to whole seconds; no EXPIRE when neither is set), not
atomically; ``Get`` sends ``HMGET key absexp sldexp data`` and, when ``sldexp`` is set, renews
the TTL to the smaller of ``sldexp`` and the time left to ``absexp``. Ticks are computed
from this process's clock, as .NET does.

``DotNetNode`` does what TickerQ 10's ``TickerQRedisContext`` does through that cache: the
heartbeat ``{"Ts":..,"Node":..}`` with an absolute expiry of interval + 20 s, the registry
updated by read-modify-write (a ``HashSet<string>`` serialized as a JSON array, sliding 30
days), ``GetDeadNodes`` (read the registry, one read per node, then remove the dead ones by
read-modify-write) and ``GetOrSetArray``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis

from tickerq._redis.entry import TICKS_AT_UNIX_EPOCH

NOT_PRESENT = -1
_TICKS_PER_SECOND = 10_000_000


def now_ticks() -> int:
    """``DateTimeOffset.UtcNow.Ticks``."""
    return TICKS_AT_UNIX_EPOCH + time.time_ns() // 100


def ticks(duration: timedelta) -> int:
    """``TimeSpan.Ticks``."""
    return (duration // timedelta(microseconds=1)) * 10


def dotnet_json(value: object) -> bytes:
    """System.Text.Json's default output: compact, non-ASCII escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


class RedisCache:
    """The wire behaviour of .NET's ``RedisCache`` with an ``InstanceName``."""

    def __init__(self, client: redis.Redis, instance: str) -> None:
        self.client = client
        self.instance = instance

    def set(
        self, key: str, value: bytes, *, absolute: timedelta | None = None, sliding: timedelta | None = None
    ) -> None:
        """``Set(key, value, options)`` with ``AbsoluteExpirationRelativeToNow`` and ``SlidingExpiration``."""
        created = now_ticks()
        absexp = created + ticks(absolute) if absolute is not None else None
        seconds: list[float] = []
        if absexp is not None:
            seconds.append((absexp - created) / _TICKS_PER_SECOND)
        if sliding is not None:
            seconds.append(sliding.total_seconds())
        prefixed = self.instance + key
        fields = {
            "absexp": absexp if absexp is not None else NOT_PRESENT,
            "sldexp": ticks(sliding) if sliding is not None else NOT_PRESENT,
            "data": value,
        }
        if not seconds:
            self.client.hset(prefixed, mapping=fields)  # type: ignore[arg-type]
            return
        with self.client.pipeline(transaction=False) as pipe:  # a batch, not a transaction
            pipe.hset(prefixed, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(prefixed, int(min(seconds)))  # (long)Math.Min(...TotalSeconds)
            pipe.execute()

    def get(self, key: str) -> bytes | None:
        """``Get(key)``: HMGET absexp sldexp data, then the sliding renewal."""
        prefixed = self.instance + key
        absexp, sldexp, data = self.client.hmget(prefixed, ["absexp", "sldexp", "data"])
        if sldexp is not None and int(sldexp) != NOT_PRESENT:
            window = int(sldexp)
            if absexp is not None and int(absexp) != NOT_PRESENT:
                window = min(window, int(absexp) - now_ticks())
            milliseconds = window // 10_000
            if milliseconds % 1000 == 0:  # SE.Redis sends EXPIRE for whole seconds, else PEXPIRE
                self.client.expire(prefixed, milliseconds // 1000)
            else:
                self.client.pexpire(prefixed, milliseconds)
        return data  # type: ignore[no-any-return]


class DotNetNode:
    """What TickerQ 10's ``TickerQRedisContext`` does, on the emulated ``RedisCache``.

    Args:
        client: A redis-py client (bytes responses).
        instance: ``InstanceName``.
        node: The node's identifier.
        interval: ``NodeHeartbeatInterval``.
        pause: Seconds between reading and writing the registry, to widen the window of
            the read-modify-write race (0: as fast as it goes).
    """

    def __init__(
        self, client: redis.Redis, instance: str, node: str, interval: timedelta, pause: float = 0.0
    ) -> None:
        self.cache = RedisCache(client, instance)
        self.client = client
        self.instance = instance
        self.node = node
        self.interval = interval
        self.pause = pause
        #: ids that were in the registry when a write of ours replaced it and are not in what we
        #: wrote, although we did not mean to remove them: lost to the read-modify-write race.
        self.dropped: set[str] = set()

    def notify_node_alive(self) -> None:
        """``NotifyNodeAliveAsync``: heartbeat, then add the node to the registry."""
        payload = dotnet_json({"Ts": time.time_ns() // 1_000_000, "Node": self.node})
        self.cache.set(f"hb:{self.node}", payload, absolute=self.interval + timedelta(seconds=20))
        self.add_to_registry(self.node)

    def registry(self) -> list[str]:
        """The registry as .NET reads it (``GetStringAsync`` + deserialize into a HashSet)."""
        raw = self.cache.get("nodes:registry")
        return list(dict.fromkeys(json.loads(raw))) if raw else []

    def add_to_registry(self, node: str) -> None:
        """``AddNodeToRegistryAsync``: read, add, write when it was added."""
        nodes = self.registry()
        if node not in nodes:
            nodes.append(node)
            time.sleep(self.pause)
            self._write_registry(nodes, meant_to_remove=set())

    def get_dead_nodes(self) -> list[str]:
        """``GetDeadNodesAsync``: read the registry, one read per node, remove the dead ones."""
        dead = [node for node in self.registry() if not self.cache.get(f"hb:{node}")]
        if dead:
            nodes = [node for node in self.registry() if node not in dead]
            time.sleep(self.pause)
            self._write_registry(nodes, meant_to_remove=set(dead))
        return dead

    def get_or_set_array(
        self, key: str, factory: Callable[[], list[Any]], expiration: timedelta | None = None
    ) -> list[Any]:
        """``GetOrSetArrayAsync``: a hit is the deserialized data; a miss stores the factory's result.

        TickerQ 10 stores without options (no expiry); ``expiration`` is passed on here as an
        absolute expiry, as a version that honours it would.
        """
        raw = self.cache.get(key)
        if raw:
            return json.loads(raw)  # type: ignore[no-any-return]
        value = factory()
        self.cache.set(key, dotnet_json(value), absolute=expiration)
        return value

    def _write_registry(self, nodes: list[str], meant_to_remove: set[str]) -> None:
        prefixed = self.instance + "nodes:registry"
        # The HGET inside the transaction only observes what this write replaces, to tell
        # when the race really dropped someone; the write itself is the cache's Set.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(prefixed, "data")
            pipe.hset(
                prefixed,
                mapping={
                    "absexp": NOT_PRESENT,
                    "sldexp": ticks(timedelta(days=30)),
                    "data": dotnet_json(nodes),
                },
            )
            pipe.expire(prefixed, int(timedelta(days=30).total_seconds()))
            replaced, _, _ = pipe.execute()
        if replaced:
            self.dropped |= set(json.loads(replaced)) - set(nodes) - meant_to_remove
