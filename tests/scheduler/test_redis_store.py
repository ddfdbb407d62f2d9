"""What only the Redis store has: its layout, Redis TIME, wake messages, faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

from tests.conftest import wait_until
from tickerq._redis.keys import Keys
from tickerq.errors import KeyTypeError, RedisUnavailableError, TickerQError
from tickerq.scheduler.model import FunctionLimits, NewCron, NewJob, Outcome, OutcomeKind, TickerStatus
from tickerq.scheduler.redis_store import RedisJobStore, parse_wake
from tickerq.testing import RedisServer

KEYS = Keys("tickerq:")
F = FunctionLimits(name="F", free_slots=100)


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisJobStore]:
    """A Redis store on its own client."""
    with redis_server.client() as client:
        yield RedisJobStore(client, KEYS)


def bucket_of(client: redis.Redis, job_id: str) -> str:
    """The hash bucket that holds an active job (found by looking, not by the script's formula)."""
    for key in client.scan_iter(match=f"{KEYS.sched_jobs_prefix}*"):
        if client.hexists(key, job_id):
            return str(key)
    raise AssertionError(f"no bucket holds {job_id!r}")


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_delay_zero_is_due_at_redis_time(store: RedisJobStore, redis_client: redis.Redis) -> None:
    """A job with delay 0 is due at Redis TIME when it was stored, whatever the client's clock."""
    before = redis_ms(redis_client)
    due = store.add_jobs([NewJob(id="a", function="F", delay_ms=0)])[0]
    after = redis_ms(redis_client)
    assert before <= due <= after
    assert due == redis_client.zscore(KEYS.sched_due("F"), "a")


def test_undecodable_records_fail_with_a_reason_and_others_are_claimed(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    """Garbage, wrong field types and a wrong-type bucket make those jobs FAILED; the rest are claimed."""
    store.add_jobs([NewJob(id=f"j{i}", function="F") for i in range(20)])
    redis_client.hset(bucket_of(redis_client, "j3"), "j3", "garbage{")
    redis_client.hset(bucket_of(redis_client, "j5"), "j5", '{"f":"F","d":"soon"}')
    victim_bucket = bucket_of(redis_client, "j7")
    in_victim = list(redis_client.hkeys(victim_bucket))
    redis_client.delete(victim_bucket)
    redis_client.set(victim_bucket, "not a hash")
    broken = {"j3", "j5", *in_victim}

    batch = store.claim_due("n1", [F], 100)

    assert {f"j{i}" for i in range(20)} - broken == {claim.job.id for claim in batch.claims}
    for job_id in broken:
        record = store.get_job(job_id)
        assert record is not None
        assert TickerStatus.FAILED == record.status
        assert record.exception_message is not None
        assert "cannot be decoded" in record.exception_message
    assert "not JSON" in store.get_job("j3").exception_message  # type: ignore[union-attr]
    assert "field d" in store.get_job("j5").exception_message  # type: ignore[union-attr]
    assert [] == list(store.claim_due("n1", [F], 100).claims)


def test_reading_an_undecodable_record_raises_key_type_error(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    """get_job of a garbled record raises KeyTypeError naming the job."""
    store.add_jobs([NewJob(id="a", function="F")])
    redis_client.hset(bucket_of(redis_client, "a"), "a", "[1,2]")
    with pytest.raises(KeyTypeError, match="job_id='a'"):
        store.get_job("a")


def test_a_garbage_fence_counter_is_a_tickerq_error(store: RedisJobStore, redis_client: redis.Redis) -> None:
    """A fence counter holding garbage fails claim_due with a KeyTypeError and claims nothing."""
    store.add_jobs([NewJob(id="a", function="F")])
    redis_client.set(KEYS.sched_fence, "garbage")
    with pytest.raises(KeyTypeError, match="fence"):
        store.claim_due("n1", [F], 10)
    assert TickerStatus.IDLE == store.get_job("a").status  # type: ignore[union-attr]


def test_keys_stay_under_the_instance_and_finished_records_expire(
    store: RedisJobStore, redis_client: redis.Redis
) -> None:
    """Every key is under {instance}tq:; claims have no TTL; a finished record has the retention TTL."""
    store.add_jobs([NewJob(id="a", function="F"), NewJob(id="b", function="F")])
    store.add_cron(NewCron(id="c", function="F", expression="0 * * * * *", time_zone="UTC"), 1)
    claims = store.claim_due("n1", [F], 10).claims
    assert -1 == redis_client.pttl(KEYS.sched_claims("n1"))
    store.finish(
        [Outcome(job_id=claims[0].job.id, fence=claims[0].fence, kind=OutcomeKind.DONE)], timedelta(hours=1)
    )
    assert all(key.startswith("tickerq:tq:") for key in redis_client.keys("*"))
    ttl = redis_client.pttl(KEYS.sched_job(claims[0].job.id))
    assert 3_500_000 < ttl <= 3_600_000
    assert 1 == redis_client.zcard(KEYS.sched_finished)


def test_buckets_hold_only_small_idle_records(store: RedisJobStore, redis_client: redis.Redis) -> None:
    """Small IDLE records share listpack buckets; claimed and large records get keys of their own."""
    store.add_jobs([NewJob(id=f"small{i}", function="F") for i in range(50)])
    store.add_jobs([NewJob(id="large", function="G", request=b'{"body":"' + b"x" * 100 + b'"}')])
    assert not redis_client.exists(KEYS.sched_job("small1"))
    assert redis_client.exists(KEYS.sched_job("large"))
    claimed = store.claim_due("n1", [FunctionLimits(name="F", free_slots=10)], 10).claims
    for claim in claimed:
        assert redis_client.exists(KEYS.sched_job(claim.job.id))
    buckets = list(redis_client.scan_iter(match=f"{KEYS.sched_jobs_prefix}*"))
    assert 40 == sum(redis_client.hlen(key) for key in buckets)
    # The compact encoding: "listpack" since Redis 7, "ziplist" before (the bundled 6.2 server).
    compact = (
        "listpack" if int(redis_client.info("server")["redis_version"].split(".")[0]) >= 7 else "ziplist"
    )
    assert {compact} == {redis_client.object("encoding", key) for key in buckets}
    assert b'{"body":"' + b"x" * 100 + b'"}' == store.get_job("large").request  # type: ignore[union-attr]


def test_add_jobs_publishes_the_earliest_due_time(store: RedisJobStore) -> None:
    """add_jobs wakes subscribers with the earliest due time of the jobs it added."""
    pubsub = store.subscribe_wake()
    try:
        now = store.now_ms()
        store.add_jobs(
            [NewJob(id="a", function="F", due_ms=now + 500), NewJob(id="b", function="G", due_ms=now + 90)]
        )
        store.add_jobs([NewJob(id="a", function="F")])  # exists: no new work, no message
        heard: list[int] = []

        def listen() -> bool:
            due = parse_wake(pubsub.get_message(timeout=0.05))
            if due is not None:
                heard.append(due)
            return bool(heard)

        wait_until(listen, timeout=5)
        assert [now + 90] == heard
        assert parse_wake(pubsub.get_message(timeout=0.2)) is None
    finally:
        pubsub.close()


def test_every_verb_is_one_round_trip(redis_server: RedisServer) -> None:
    """Each store verb writes one request to Redis (one script or one pipeline)."""
    written = 0

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            nonlocal written
            written += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    pool = redis.ConnectionPool(host=redis_server.host, port=redis_server.port, connection_class=Counting)
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()
        store = RedisJobStore(client, KEYS)
        # Warm-up: the first call of a script on a fresh server also sends its body.
        store.add_jobs([NewJob(id="w", function="F")])
        warm = store.claim_due("n1", [F], 1).claims[0]
        store.start([("w", warm.fence)])
        store.finish([Outcome(job_id="w", fence=warm.fence, kind=OutcomeKind.DONE)])
        store.get_job("w")

        def trips(call: Any) -> int:
            nonlocal written
            before = written
            call()
            return written - before

        jobs = [NewJob(id=f"j{i}", function="F") for i in range(50)]
        assert 1 == trips(lambda: store.add_jobs(jobs))
        batch = store.claim_due("n1", [F], 50)
        assert 1 == trips(lambda: store.claim_due("n1", [F], 50))
        pairs = [(claim.job.id, claim.fence) for claim in batch.claims]
        assert 1 == trips(lambda: store.start(pairs))
        done = [Outcome(job_id=job_id, fence=fence, kind=OutcomeKind.DONE) for job_id, fence in pairs]
        assert 1 == trips(lambda: store.finish(done))
        assert 1 == trips(lambda: store.get_job("j1"))
        assert 1 == trips(lambda: store.next_due_ms(["F", "G", "H"]))
    finally:
        client.close()
        pool.disconnect()


def test_a_decoding_client_works_too(redis_server: RedisServer) -> None:
    """A client with decode_responses=True stores and reads the same records."""
    with redis_server.client(decode_responses=True) as client:
        store = RedisJobStore(client, KEYS)
        store.add_jobs([NewJob(id="a", function="F", request='{"to":"é"}'.encode())])
        claim = store.claim_due("n1", [F], 1).claims[0]
        assert '{"to":"é"}'.encode() == claim.job.request
        assert store.add_cron(
            NewCron(id="c", function="F", expression="* * * * * *", time_zone="UTC"), 5
        ).enabled


def test_redis_down_raises_redis_unavailable(fault_server: RedisServer) -> None:
    """With Redis stopped, a verb raises RedisUnavailableError (a TickerQError)."""
    with fault_server.client(socket_timeout=1, socket_connect_timeout=1) as client:
        store = RedisJobStore(client, KEYS)
        store.add_jobs([NewJob(id="a", function="F")])
        fault_server.stop()
        with pytest.raises(RedisUnavailableError) as caught:
            store.claim_due("n1", [F], 10)
        assert isinstance(caught.value, TickerQError)


def test_separate_stores_race_one_cron_occurrence(redis_server: RedisServer) -> None:
    """Stores on separate connections racing materialize_cron create the occurrence once."""
    clients = [redis_server.client() for _ in range(6)]
    try:
        stores = [RedisJobStore(client, KEYS) for client in clients]
        stores[0].add_cron(NewCron(id="c", function="F", expression="* * * * * *", time_zone="UTC"), 1_000)
        go = threading.Barrier(len(stores))
        won: list[bool] = []

        def race(index: int) -> None:
            go.wait()
            won.append(stores[index].materialize_cron("c", 1_000, 1_000, 2_000, 0))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert 1 == won.count(True)
        assert 1 == clients[0].zcard(KEYS.sched_due("F"))
    finally:
        for client in clients:
            client.close()
