"""Node registry on a real Redis: key names, the RedisCache layout, TTLs, atomic membership, repair."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import orjson
import pytest
import redis
from redis.crc import key_slot

from tests.conftest import wait_until
from tickerq._redis.entry import ticks_to_unix_ms
from tickerq._redis.keys import Keys
from tickerq.errors import KeyTypeError
from tickerq.nodes.registry import NodeRegistry
from tickerq.testing import RedisServer

KEYS = Keys("tickerq:")
REGISTRY = "tickerq:nodes:registry"


def make(server: RedisServer, node: str, ttl: float = 80.0, instance: str = "tickerq:") -> NodeRegistry:
    return NodeRegistry(server.client(), Keys(instance), node, timedelta(seconds=ttl))


def registry_ids(client: redis.Redis) -> list[str]:
    """The registry's node ids, from the data field of its hash."""
    return orjson.loads(client.hget(REGISTRY, "data"))  # type: ignore[no-any-return]


def test_heartbeat_key_holds_node_and_server_time(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The heartbeat is a RedisCache hash whose data is {"Ts", "Node", "Instance"}, Ts in Redis time (ms)."""
    beat = make(redis_server, "web-01").beat()
    entry = redis_client.hgetall("tickerq:hb:web-01")
    payload = orjson.loads(entry["data"])
    seconds, micros = redis_client.time()
    assert {"absexp", "sldexp", "data"} == set(entry)
    assert {"Ts", "Node", "Instance"} == set(payload)
    assert "web-01" == payload["Node"]
    assert beat.timestamp_ms == payload["Ts"]
    assert abs(seconds * 1000 + micros // 1000 - payload["Ts"]) < 5_000
    assert "-1" == entry["sldexp"]
    assert payload["Ts"] + 80_000 == ticks_to_unix_ms(entry["absexp"])


def test_heartbeat_ttl_is_interval_plus_grace(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The heartbeat TTL equals the TTL given (interval + grace) and the registry's is 30 days, sliding."""
    make(redis_server, "web-01", ttl=80).beat()
    assert 79_000 < redis_client.pttl("tickerq:hb:web-01") <= 80_000
    assert 30 * 86_400_000 - 5_000 < redis_client.pttl(REGISTRY) <= 30 * 86_400_000
    assert ["-1", str(30 * 86_400 * 10_000_000)] == redis_client.hmget(REGISTRY, ["absexp", "sldexp"])


def test_registry_is_a_json_array_of_ids(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The registry is a hash of exactly absexp, sldexp and data, a JSON array of ids in join order."""
    for node in ("a", "b", "c"):
        make(redis_server, node).beat()
    assert {"absexp", "sldexp", "data"} == set(redis_client.hkeys(REGISTRY))
    assert ["a", "b", "c"] == registry_ids(redis_client)
    assert ("a", "b", "c") == make(redis_server, "x").health().registered


def test_registry_ttl_slides_without_rewriting(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A beat of a known node renews the registry's sliding TTL and leaves its value untouched."""
    node = make(redis_server, "a")
    node.beat()
    redis_client.pexpire(REGISTRY, 10_000)
    before = redis_client.hgetall(REGISTRY)
    node.beat()
    assert before == redis_client.hgetall(REGISTRY)
    assert redis_client.pttl(REGISTRY) > 86_400_000


def test_unicode_and_slash_ids_round_trip(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Ids with non-ASCII characters, quotes and slashes survive the Lua JSON round trip."""
    ids = ["nœud-ü", 'q"uote', "a/b\\c"]
    for node in ids:
        make(redis_server, node).beat()
    assert ids == registry_ids(redis_client)
    assert tuple(ids) == make(redis_server, "x").health().registered


def test_dead_nodes_are_those_without_heartbeat(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """get_dead_nodes lists registered nodes whose heartbeat key is gone, and changes nothing."""
    make(redis_server, "alive").beat()
    make(redis_server, "dead").beat()
    redis_client.delete("tickerq:hb:dead")
    before = redis_client.hgetall(REGISTRY)
    probe = make(redis_server, "probe")
    health = probe.health()
    assert ("dead",) == health.dead
    assert (2, 1, 1) == (health.total_nodes, health.dead_nodes, health.healthy_nodes)
    assert ("alive",) == health.healthy
    assert ("dead",) == probe.dead()
    assert ("alive", "dead") == probe.registered()
    assert before == redis_client.hgetall(REGISTRY)


def test_empty_registry(redis_server: RedisServer) -> None:
    """With no registry key there are no nodes and no dead nodes."""
    health = make(redis_server, "probe").health()
    assert ((), ()) == (health.registered, health.dead)


def test_remove_nodes_only_drops_nodes_still_dead(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """remove() drops dead nodes but keeps one whose heartbeat came back; the array stays an array."""
    for node in ("a", "b", "c"):
        make(redis_server, node).beat()
    redis_client.delete("tickerq:hb:a", "tickerq:hb:b")
    make(redis_server, "b").beat()  # b came back
    assert ["a"] == make(redis_server, "c").remove(["a", "b"])
    assert ["b", "c"] == registry_ids(redis_client)
    redis_client.delete("tickerq:hb:b", "tickerq:hb:c")
    assert ["b", "c"] == make(redis_server, "x").remove(["b", "c"])
    assert "[]" == redis_client.hget(REGISTRY, "data")
    assert () == make(redis_server, "x").registered()


def test_concurrent_registration_loses_no_node(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Twenty threads registering at once all end up in the registry."""
    barrier = threading.Barrier(20)
    nodes = [make(redis_server, f"n{i}") for i in range(20)]

    def register(node: NodeRegistry) -> None:
        barrier.wait()
        node.beat()

    threads = [threading.Thread(target=register, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {f"n{i}" for i in range(20)} == set(registry_ids(redis_client))


@pytest.mark.parametrize(
    "garbage", [b"not json", b"{}", b'{"a": 1}', b"[1, 2", b'["a", 3]', b"[garbage]", b'["a","a","b"]']
)
def test_corrupted_registry_is_read_from_index_and_repaired(
    redis_server: RedisServer, redis_client: redis.Redis, garbage: bytes
) -> None:
    """A corrupted registry does not break reads, and the next beat (with scan) rebuilds it."""
    make(redis_server, "a").beat()
    make(redis_server, "b").beat()
    redis_client.hset(REGISTRY, "data", garbage)
    assert {"a", "b"} <= set(make(redis_server, "probe").health().registered)
    beat = make(redis_server, "a").beat(scan_lease=timedelta(seconds=5))
    assert beat.repaired
    assert {"a", "b"} == set(registry_ids(redis_client))


def test_wrong_type_registry_is_reported(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A registry key of another Redis type raises KeyTypeError naming the key and type."""
    redis_client.rpush(REGISTRY, "x")
    node = make(redis_server, "a")
    for call in (node.beat, node.health, node.dead, lambda: node.remove(["zz"])):
        with pytest.raises(KeyTypeError, match="tickerq:nodes:registry holds a list"):
            call()
    assert "x" == redis_client.lindex(REGISTRY, 0)


def test_scan_lease_goes_to_one_node_per_period(redis_server: RedisServer) -> None:
    """Of many nodes beating in one period, exactly one gets the scan (and the dead list)."""
    nodes = [make(redis_server, f"n{i}") for i in range(10)]
    beats = [node.beat(scan_lease=timedelta(seconds=5)) for node in nodes]
    assert 1 == sum(beat.dead is not None for beat in beats)


def test_hash_tag_instance_keeps_keys_in_one_slot(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """With instance "{tickerq}:" every key the registry writes hashes to one Cluster slot."""
    make(redis_server, "a", instance="{tickerq}:").beat(scan_lease=timedelta(seconds=1))
    written = redis_client.keys("*")
    assert len(written) >= 3
    assert 1 == len({key_slot(key.encode()) for key in written})


def test_instance_names_isolate_apps(redis_server: RedisServer) -> None:
    """Two instance names sharing one Redis see only their own nodes."""
    make(redis_server, "a", instance="app1:").beat()
    make(redis_server, "b", instance="app2:").beat()
    assert ("a",) == make(redis_server, "x", instance="app1:").health().registered
    assert ("b",) == make(redis_server, "x", instance="app2:").health().registered


def test_heartbeat_expires_after_ttl(redis_server: RedisServer) -> None:
    """A node that stops beating is dead once its heartbeat TTL passes, and not before."""
    probe = make(redis_server, "probe")
    make(redis_server, "short", ttl=1.0).beat()
    written = time.monotonic()
    assert () == probe.health().dead
    wait_until(lambda: probe.health().dead, timeout=5)
    assert time.monotonic() - written >= 0.9
    assert ("short",) == probe.health().dead


def test_beat_restores_members_missing_from_a_rewritten_registry(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A registry rewritten from outside without a live member gets it back at the next beat of any node."""
    make(redis_server, "a").beat()
    make(redis_server, "b").beat()
    redis_client.hset(REGISTRY, "data", '["a"]')
    beat = make(redis_server, "a").beat()
    assert (1, False) == (beat.restored, beat.repaired)
    assert ["a", "b"] == registry_ids(redis_client)


def test_scan_restores_a_member_dropped_by_a_rewrite_of_equal_length(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A rewrite keeping the registry's length escapes the per-beat check; the scan puts the member back."""
    make(redis_server, "a").beat()
    make(redis_server, "b").beat()
    redis_client.hset(REGISTRY, "data", '["a","x"]')  # b replaced by a foreign id of the same length
    assert 0 == make(redis_server, "b").beat().restored
    assert ["a", "x"] == registry_ids(redis_client)
    beat = make(redis_server, "a").beat(scan_lease=timedelta(seconds=5))
    assert 1 == beat.restored
    assert ["a", "x", "b"] == registry_ids(redis_client)


def test_remove_merges_live_members_back(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Every tickerq write of the registry puts back the live tickerq nodes it lacks, not only the writer."""
    for node in ("a", "b", "c"):
        make(redis_server, node).beat()
    redis_client.hset(REGISTRY, "data", '["a","c"]')  # b dropped by another writer
    redis_client.delete("tickerq:hb:c")
    assert ["c"] == make(redis_server, "a").remove(["c"])
    assert ["a", "b"] == registry_ids(redis_client)
