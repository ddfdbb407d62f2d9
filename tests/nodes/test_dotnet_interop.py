"""Python and TickerQ .NET nodes on one Redis: tickerq and an emulated .NET node (tests/dotnet.py)."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest
import redis

from tests.conftest import wait_until
from tests.dotnet import DotNetNode, RedisCache, dotnet_json, now_ticks
from tickerq import ConfigurationError, NodesDead, RedisOptions, add_tickerq
from tickerq._redis.entry import ticks_to_unix_ms
from tickerq._redis.keys import Keys
from tickerq.cache.cache import DistributedCache
from tickerq.events import EventHub
from tickerq.nodes.heartbeat import HeartbeatService
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

INSTANCE = "tickerq:"
KEYS = Keys(INSTANCE)
REGISTRY = "tickerq:nodes:registry"
THIRTY_DAYS_S = 30 * 86_400


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A bytes client, as StackExchange.Redis sees values."""
    with redis_server.client() as client:
        yield client


def dotnet(client: redis.Redis, node: str, interval: float = 60.0, pause: float = 0.0) -> DotNetNode:
    return DotNetNode(client, INSTANCE, node, timedelta(seconds=interval), pause=pause)


def python(
    server: RedisServer,
    node: str,
    ttl: float = 80.0,
    grace: timedelta | None = None,
    token: str | None = None,
) -> NodeRegistry:
    return NodeRegistry(
        server.client(),
        KEYS,
        node,
        timedelta(seconds=ttl),
        foreign_dead_node_grace=grace,
        instance_token=token,
    )


def service(
    server: RedisServer,
    node: str,
    interval: float = 0.1,
    grace: timedelta | None = None,
    events: EventHub | None = None,
    refuse_duplicate: bool = False,
) -> HeartbeatService:
    client = server.client(socket_timeout=2, socket_connect_timeout=2)
    registry = NodeRegistry(
        client,
        KEYS,
        node,
        timedelta(seconds=interval * 3),
        interval=timedelta(seconds=interval),
        foreign_dead_node_grace=grace,
    )
    return HeartbeatService(
        registry,
        timedelta(seconds=interval),
        events or EventHub(),
        retry_interval=timedelta(seconds=0.1),
        refuse_duplicate=refuse_duplicate,
    )


def registry_ids(client: redis.Redis) -> list[str]:
    data = client.hget(REGISTRY, "data")
    return orjson.loads(data) if data else []  # type: ignore[no-any-return]


# --- registry and heartbeat, both ways ---------------------------------------------------------------


def test_dotnet_reads_python_heartbeat_and_registry(redis_server: RedisServer, raw: redis.Redis) -> None:
    """A .NET node reads a Python node's heartbeat (Ts, Node) and registry entry, and sees it alive."""
    beat = python(redis_server, "py-1").beat()
    net = dotnet(raw, "net-1")
    heartbeat = orjson.loads(net.cache.get("hb:py-1") or b"null")
    assert {"Ts": beat.timestamp_ms, "Node": "py-1"} == {k: heartbeat[k] for k in ("Ts", "Node")}
    assert ["py-1"] == net.registry()
    assert [] == net.get_dead_nodes()
    net.notify_node_alive()
    assert ["py-1", "net-1"] == net.registry()
    assert ["py-1", "net-1"] == registry_ids(raw)


def test_dotnet_read_renews_the_registry_ttl_python_wrote(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """The registry Python writes slides as .NET expects: a .NET read renews its TTL to 30 days."""
    python(redis_server, "py-1").beat()
    raw.expire(REGISTRY, 100)
    dotnet(raw, "net-1").registry()
    assert THIRTY_DAYS_S - 5 < raw.ttl(REGISTRY) <= THIRTY_DAYS_S


def test_python_reads_dotnet_heartbeat_and_registry(redis_server: RedisServer, raw: redis.Redis) -> None:
    """Python lists a live .NET node, joins its registry and reports it dead when its heartbeat goes."""
    net = dotnet(raw, "net-1", interval=10)
    net.notify_node_alive()
    assert 29 <= raw.ttl("tickerq:hb:net-1") <= 30  # interval + 20 s, whole seconds
    probe = python(redis_server, "py-1")
    assert (("net-1",), ()) == (probe.registered(), probe.dead())
    probe.beat()
    assert ["net-1", "py-1"] == net.registry()
    raw.delete("tickerq:hb:net-1")
    assert ("net-1",) == probe.dead()
    assert ("net-1", "py-1") == probe.health().registered


def test_python_beat_renews_the_sliding_registry_dotnet_wrote(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """A Python beat reads the registry as a RedisCache reader does: its sliding TTL is renewed."""
    dotnet(raw, "net-1").notify_node_alive()
    node = python(redis_server, "py-1")
    node.beat()
    raw.expire(REGISTRY, 100)
    node.beat()
    assert THIRTY_DAYS_S - 5 < raw.ttl(REGISTRY) <= THIRTY_DAYS_S


# --- the read-modify-write race ----------------------------------------------------------------------


def test_python_nodes_dropped_by_dotnet_rewrites_come_back_within_an_interval(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """.NET rewrites drop joining Python nodes; after a drop all are back within about one interval."""
    interval = 0.2
    stop = threading.Event()
    churners = [dotnet(redis_server.client(), f"net-{i}", pause=0.004) for i in range(2)]

    def churn(net: DotNetNode) -> None:
        serial = 0
        while not stop.is_set():  # .NET nodes restarting under new ids: each one a read-modify-write
            serial += 1
            net.node = f"{net.node.split('#')[0]}#{serial}"
            net.notify_node_alive()

    threads = [threading.Thread(target=churn, args=(net,)) for net in churners]
    for thread in threads:
        thread.start()
    stale = churners[0].registry()  # what a slow .NET node read before any Python node joined
    services: list[HeartbeatService] = []
    ours = {f"py-{i}" for i in range(8)}
    try:
        for i in range(8):
            time.sleep(random.uniform(0.05, 0.15))
            services.append(service(redis_server, f"py-{i}", interval=interval))
            services[-1].start()
        time.sleep(3 * interval)
        stop.set()
        for thread in threads:
            thread.join()
        dropped = set().union(*(net.dropped for net in churners)) & ours
        assert dropped, "no .NET rewrite dropped a Python node: the race did not happen"
        # The slow .NET node now writes what it read, plus itself: every Python node is dropped.
        wait_until(lambda: ours <= set(registry_ids(raw)), timeout=5, interval=0.01)
        assert not ours & set(stale)  # what it writes lists no Python node
        churners[0]._write_registry([*stale, "net-slow"], meant_to_remove=set())
        dropped_at = time.monotonic()  # (a beat may already have repaired it: not read here, that races)
        wait_until(lambda: ours <= set(registry_ids(raw)), timeout=5, interval=0.01)
        assert time.monotonic() - dropped_at < interval + 0.3  # one interval, plus scheduling slack
        assert "net-slow" in registry_ids(raw)
    finally:
        stop.set()
        for svc in services:
            svc.stop()


def test_every_python_write_merges_all_live_python_nodes(redis_server: RedisServer, raw: redis.Redis) -> None:
    """A Python node joining after a .NET rewrite dropped another Python node puts that one back too."""
    python(redis_server, "py-1").beat()
    net = dotnet(raw, "net-1")
    net.notify_node_alive()
    raw.hset(REGISTRY, "data", dotnet_json(["net-1"]))  # a rewrite that lost py-1
    python(redis_server, "py-2").beat()
    assert {"net-1", "py-1", "py-2"} == set(net.registry())


# --- deaths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("survivor_started", ["before", "after"])
def test_python_death_reaches_python_handlers_after_dotnet_removed_it(
    redis_server: RedisServer, raw: redis.Redis, survivor_started: str
) -> None:
    """A dead Python node a .NET node removed first still reaches the Python survivors' handlers."""
    if survivor_started == "before":
        python(redis_server, "py-survivor").beat()
    python(redis_server, "py-victim").beat()
    net = dotnet(raw, "net-1")
    net.notify_node_alive()
    raw.delete("tickerq:hb:py-victim")  # it died
    assert ["py-victim"] == net.get_dead_nodes()
    assert "py-victim" not in net.registry()
    handled: list[str] = []
    survivor = service(redis_server, "py-survivor")
    survivor.add_dead_node_handler(handled.append)
    with survivor:
        wait_until(lambda: handled)
        wait_until(lambda: not raw.sismember(KEYS.tickerq_nodes, "py-victim"))
    assert ["py-victim"] == handled
    assert {"net-1", "py-survivor"} == set(registry_ids(raw))


def test_dead_python_node_removed_by_dotnet_is_still_reported_dead(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """get_dead_nodes() lists a dead Python node a .NET node removed, before and after a beat saw that."""
    python(redis_server, "py-1").beat()
    victim = python(redis_server, "py-victim")
    victim.beat()
    net = dotnet(raw, "net-1")
    net.notify_node_alive()
    raw.delete("tickerq:hb:py-victim")
    assert ["py-victim"] == net.get_dead_nodes()
    probe = python(redis_server, "probe")
    assert ("py-victim",) == probe.dead()  # the rewrite is not checked yet: full comparison
    python(redis_server, "py-1").beat()  # checks the rewrite and records what the registry lacks
    assert "py-victim" not in registry_ids(raw)
    assert ("py-victim",) == probe.dead()
    assert ("py-1", "net-1", "py-victim") == probe.registered()
    victim.beat()  # it was only paused: back in the registry
    assert () == probe.dead()
    assert {"net-1", "py-1", "py-victim"} == set(registry_ids(raw))
    assert not raw.exists(KEYS.unlisted)


def test_dead_dotnet_node_is_left_for_the_grace_then_removed(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """A dead .NET node stays registered through the grace (no Python handler runs), then a scan drops it."""
    net = dotnet(raw, "net-dead")
    net.notify_node_alive()
    raw.delete("tickerq:hb:net-dead")
    events = EventHub()
    dead_events: list[NodesDead] = []
    events.subscribe(NodesDead, dead_events.append)
    handled: list[str] = []
    grace = timedelta(seconds=1)
    survivor = service(redis_server, "py-1", interval=0.1, grace=grace, events=events)
    survivor.add_dead_node_handler(handled.append)
    scans = 0

    def count_scans() -> bool:
        nonlocal scans
        beat = survivor.last_beat
        scans += beat is not None and beat.dead is not None
        return False

    with survivor:
        started = time.monotonic()
        seen_at = raw.hget(KEYS.foreign_dead, "net-dead")
        while time.monotonic() - started < 0.6:
            count_scans()
            seen_at = seen_at or raw.hget(KEYS.foreign_dead, "net-dead")
            assert "net-dead" in registry_ids(raw)
            time.sleep(0.05)
        assert seen_at is not None  # the scans saw it dead and are counting its grace
        wait_until(lambda: "net-dead" not in registry_ids(raw), timeout=5)
        removed_after = time.monotonic() - started
    assert removed_after >= 0.9
    assert [] == handled
    assert ("net-dead",) == dead_events[0].removed
    assert ["py-1"] == registry_ids(raw)
    assert not raw.exists(KEYS.foreign_dead)


def test_foreign_grace_defaults_to_ten_heartbeat_ttls() -> None:
    """RedisOptions.foreign_dead_node_grace is None by default, meaning 10 heartbeat TTLs; it is validated."""
    options = RedisOptions(node_heartbeat_interval=30, node_heartbeat_grace=10)
    assert options.foreign_dead_node_grace is None
    assert timedelta(seconds=400) == options.foreign_grace
    options.foreign_dead_node_grace = 5
    assert timedelta(seconds=5) == options.foreign_grace
    with pytest.raises(ConfigurationError, match="foreign_dead_node_grace"):
        options.foreign_dead_node_grace = -1
    with pytest.raises(ConfigurationError, match="on_duplicate_node='ignore' is not allowed"):
        options.on_duplicate_node = "ignore"


# --- cache entries, both ways ------------------------------------------------------------------------


@dataclasses.dataclass
class Ticker:
    Id: int
    Function: str


def test_dotnet_cache_entry_is_a_hit_for_get_or_set_array(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """An array .NET cached (PascalCase objects) is a hit: dicts, or item_type instances."""
    net = dotnet(raw, "net-1")
    value = [{"Id": 1, "Function": "Send"}, {"Id": 2, "Function": "Bill"}]
    net.get_or_set_array("tickers", lambda: value, timedelta(minutes=5))
    cache = DistributedCache(raw, KEYS, operation_timeout=timedelta(seconds=1))

    def factory() -> list[Ticker]:
        raise AssertionError("a hit must not call the factory")

    assert value == cache.get_or_set_array("tickers", factory, 60)
    assert [Ticker(1, "Send"), Ticker(2, "Bill")] == cache.get_or_set_array(
        "tickers", factory, item_type=Ticker
    )
    assert 290 <= raw.ttl("tickerq:tickers") <= 300  # the hit left .NET's expiry alone


def test_hit_on_a_sliding_dotnet_entry_renews_its_ttl(redis_server: RedisServer, raw: redis.Redis) -> None:
    """Reading a .NET entry with a sliding expiration renews its TTL, as a RedisCache reader does."""
    RedisCache(raw, INSTANCE).set("k", b"[1]", sliding=timedelta(minutes=10), absolute=timedelta(hours=1))
    raw.expire("tickerq:k", 5)
    cache = DistributedCache(raw, KEYS, operation_timeout=timedelta(seconds=1))
    assert [1] == cache.get_or_set_array("k", list)
    assert 595 <= raw.ttl("tickerq:k") <= 600


def test_python_cache_entry_is_a_hit_in_dotnet_with_its_expiry(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """An entry Python cached is a hit for .NET, with absexp = now + expiration and the TTL to match."""
    cache = DistributedCache(raw, KEYS, operation_timeout=timedelta(seconds=1))
    cache.get_or_set_array("tickers", lambda: [Ticker(1, "Send")], timedelta(minutes=5))
    net = dotnet(raw, "net-1")

    def factory() -> list[object]:
        raise AssertionError("a hit must not call the factory")

    assert [{"Id": 1, "Function": "Send"}] == net.get_or_set_array("tickers", factory)
    absexp, sldexp = raw.hmget("tickerq:tickers", ["absexp", "sldexp"])
    assert b"-1" == sldexp
    expected = (now_ticks() - 621_355_968_000_000_000) // 10_000 + 300_000
    assert abs(expected - ticks_to_unix_ms(absexp or b"0")) < 2_000
    assert 298 <= raw.ttl("tickerq:tickers") <= 300


# --- migration and duplicates ----------------------------------------------------------------------------


def test_older_string_registry_and_heartbeat_are_rewritten_as_hashes(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """An older tickerq's string registry and heartbeat are read and rewritten in the RedisCache layout."""
    raw.set(REGISTRY, b'["old-1","py-1"]', px=86_400_000)
    raw.set("tickerq:hb:py-1", b'{"node":"py-1","ts":1}', px=60_000)
    raw.set("tickerq:hb:old-1", b'{"node":"old-1","ts":1}', px=60_000)  # an older node still running
    raw.sadd(KEYS.tickerq_nodes, "old-1", "py-1")
    probe = python(redis_server, "probe")
    assert (("old-1", "py-1"), ()) == (probe.registered(), probe.dead())  # read before any rewrite
    python(redis_server, "py-1").beat()
    assert b"hash" == raw.type(REGISTRY)
    assert b"hash" == raw.type("tickerq:hb:py-1")
    assert ["old-1", "py-1"] == dotnet(raw, "net-1").registry()
    assert THIRTY_DAYS_S - 5 < raw.ttl(REGISTRY) <= THIRTY_DAYS_S
    assert () == probe.dead()  # the older node's string heartbeat still counts as alive


def test_second_process_with_our_node_id_is_warned_about(
    redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A first beat finding another process's live heartbeat under its node id logs a warning, once."""
    caplog.set_level(logging.WARNING)
    first = python(redis_server, "web-01", token="process-a")
    first.beat(first=True)
    second = python(redis_server, "web-01", token="process-b")
    beat = second.beat(first=True)
    assert beat.duplicate is not None
    assert "process-a" == beat.duplicate.token
    assert 1 == caplog.text.count(
        "node_identifier='web-01' is also used by another process (instance process-a)"
    )
    first.beat()  # the first process beats again: it now sees process-b's token
    second.beat()
    assert 1 == caplog.text.count("(instance process-b)")
    assert 1 == caplog.text.count("(instance process-a)")


def test_stale_heartbeat_of_a_stopped_process_is_not_a_duplicate(redis_server: RedisServer) -> None:
    """At start, a heartbeat under our id older than one interval (a process that stopped) is not reported."""
    python(redis_server, "web-01", token="crashed").beat(first=True)
    time.sleep(0.3)
    restarted = NodeRegistry(
        redis_server.client(),
        KEYS,
        "web-01",
        timedelta(seconds=80),
        interval=timedelta(seconds=0.2),
        instance_token="restarted",
    )
    assert restarted.beat(first=True).duplicate is None


def test_refuse_duplicate_raises_and_writes_nothing(redis_server: RedisServer, raw: redis.Redis) -> None:
    """Asked to refuse, a first beat over another process's live heartbeat raises and leaves it."""
    python(redis_server, "web-01", token="process-a").beat(first=True)
    before = raw.hgetall("tickerq:hb:web-01")
    with pytest.raises(ConfigurationError, match="node_identifier='web-01' is also used by another process"):
        python(redis_server, "web-01", token="process-b").beat(first=True, refuse_duplicate=True)
    assert before == raw.hgetall("tickerq:hb:web-01")


def test_refused_heartbeat_starts_once_the_other_process_is_gone(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """A refused start() raises; started again once the other process's heartbeat lapsed, it runs."""
    python(redis_server, "web-01", token="another-process").beat(first=True)
    hb = service(redis_server, "web-01", interval=0.1, refuse_duplicate=True)
    with pytest.raises(ConfigurationError):
        hb.start()
    assert not hb.running
    raw.delete("tickerq:hb:web-01")  # the other process stopped and its heartbeat expired
    with hb:
        wait_until(lambda: hb.last_beat is not None and hb.last_beat.dead is not None)  # scans: the loop runs
        assert hb.running


def test_container_with_on_duplicate_node_refuse_does_not_start(redis_server: RedisServer) -> None:
    """With on_duplicate_node="refuse", init_resources() raises when another live process uses the id."""
    python(redis_server, "web-01", token="another-process").beat(first=True)
    container = add_tickerq(
        lambda options: (
            options.configure_scheduler(node_identifier="web-01"),
            options.add_redis(configuration=redis_server.address, on_duplicate_node="refuse"),
        )
    )
    try:
        with pytest.raises(ConfigurationError, match="on_duplicate_node='refuse'"):
            container.init_resources()
    finally:
        container.shutdown_resources()


def test_dotnet_node_with_our_node_id_is_a_duplicate(
    redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A .NET node beating under our node id (no instance token) is reported at start."""
    dotnet(raw, "web-01").notify_node_alive()
    beat = python(redis_server, "web-01").beat(first=True)
    assert beat.duplicate is not None
    assert "" == beat.duplicate.token
    assert "not tickerq (a TickerQ .NET node?)" in caplog.text
