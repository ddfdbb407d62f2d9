"""Leader election on a real Redis: node processes, SIGKILL, resign, Redis outages, fork."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import wait_until
from tests.netfault import FaultProxy
from tickerq import add_tickerq
from tickerq._redis.keys import Keys
from tickerq._runtime.clock import ManualClock
from tickerq._runtime.dispatcher import Dispatcher
from tickerq.election.election import LeaderElection
from tickerq.election.election_lease import ElectionLease, LeaseReply, Status
from tickerq.errors import ConfigurationError, InvalidKeyError, KeyTypeError, RedisUnavailableError
from tickerq.events import EventHub, LeaderChanged, LeadershipAcquired, LeadershipLost
from tickerq.testing import RedisServer

LEASE, DEADLINE, RETRY = 1.5, 1.0, 0.25
#: Two shared cores: a process may wait this long for the CPU on top of any loose bound below.
SLACK = 0.75
#: Scheduling noise allowed on top of the bounds that the tests' names promise.
NOISE = 0.25
KEYS = Keys("tickerq:")
LEASE_KEY = KEYS.election("sched")
TERM_KEY = KEYS.election_term("sched")
NODE_SCRIPT = Path(__file__).parent.with_name("election_node.py")

Make = Callable[..., LeaderElection]


@pytest.fixture
def make() -> Iterator[Make]:
    """Builds elections (short timings unless given) and stops them after the test."""
    made: list[tuple[LeaderElection, redis.Redis]] = []

    def factory(server: RedisServer, node: str, name: str = "sched", **kwargs: Any) -> LeaderElection:
        client = server.client(socket_timeout=1, socket_connect_timeout=1)
        timings = {"lease": LEASE, "renew_deadline": DEADLINE, "retry_period": RETRY}
        election = LeaderElection(client, KEYS, node, name, **{**timings, **kwargs})
        made.append((election, client))
        return election

    yield factory
    for election, client in made:
        election.stop()
        client.close()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> float:
    """Wait until ``predicate()`` is truthy; return the seconds it took."""
    started = time.monotonic()
    wait_until(predicate, timeout=timeout, interval=0.005)
    return time.monotonic() - started


def failed_attempts(caplog: pytest.LogCaptureFixture) -> int:
    """How many of the election's Redis calls failed so far (logged once as a warning, then at debug)."""
    return sum(
        "Redis unavailable" in r.getMessage() or "still unavailable" in r.getMessage() for r in caplog.records
    )


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("timings", "message"),
    [
        ({"lease": 10, "renew_deadline": 10}, "lease=10 s must be longer than renew_deadline=10 s"),
        (
            {"lease": 20, "renew_deadline": 2.4, "retry_period": 2},
            "renew_deadline=2.4 s must be longer than 1.2 x",
        ),
        ({"retry_period": 0}, "retry_period=0 is not allowed"),
        ({"lease": "15s"}, "lease='15s' (str) is not a duration"),
    ],
)
def test_invalid_timings_are_rejected_naming_fields_and_values(timings: dict[str, Any], message: str) -> None:
    """Timings that break lease > renew_deadline > 1.2 x retry_period raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        LeaderElection(redis.Redis(), KEYS, "a", "sched", **timings)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30_000), st.integers(1, 30_000), st.integers(1, 30_000))
def test_timings_are_valid_exactly_when_ordered(lease_ms: int, deadline_ms: int, retry_ms: int) -> None:
    """Construction succeeds exactly when lease > renew_deadline > 1.2 x retry_period (no I/O)."""
    lease, deadline, retry = (timedelta(milliseconds=v) for v in (lease_ms, deadline_ms, retry_ms))
    valid = lease > deadline > retry * 1.2
    try:
        LeaderElection(
            redis.Redis(), KEYS, "a", "sched", lease=lease, renew_deadline=deadline, retry_period=retry
        )
    except ConfigurationError:
        assert not valid
    else:
        assert valid


def test_defaults_are_the_kubernetes_ones() -> None:
    """Without timings the lease is 15 s, the renew deadline 10 s and the retry period 2 s."""
    election = LeaderElection(redis.Redis(), KEYS, "a", "sched")
    assert (15, 10, 2) == (
        election.lease.seconds,
        election.renew_deadline.seconds,
        election.retry_period.seconds,
    )


@pytest.mark.parametrize(("node", "name"), [("", "sched"), ("a", "")])
def test_empty_node_or_name_is_rejected(node: str, name: str) -> None:
    """An empty node id or election name raises InvalidKeyError."""
    with pytest.raises(InvalidKeyError):
        LeaderElection(redis.Redis(), KEYS, node, name)


# -- one process -----------------------------------------------------------------


def test_observer_never_campaigns(redis_server: RedisServer, redis_client: redis.Redis, make: Make) -> None:
    """An election that is never started reads the leader but writes nothing, even on resign/stop."""
    observer = make(redis_server, "observer")
    assert observer.leader() is None
    observer.resign()
    observer.stop()
    assert [] == redis_client.keys("*")
    candidate = make(redis_server, "a")
    candidate.start()
    wait_for(lambda: candidate.is_leader)
    assert "a" == observer.leader()
    assert not observer.is_leader
    assert observer.term is None
    observer.resign()
    observer.stop()
    assert "a" == redis_client.hget(LEASE_KEY, "node")


@pytest.mark.slow
def test_leader_gets_its_term_from_redis_and_keeps_it(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """The first leader gets term 1 from the counter and keeps it over two leases by renewing."""
    lost: list[int] = []
    election = make(redis_server, "a", on_demoted=lost.append)
    election.start()
    wait_for(lambda: election.is_leader)
    assert 1 == election.term
    assert {"node": "a", "term": "1"} == {
        k: v for k, v in redis_client.hgetall(LEASE_KEY).items() if k != "token"
    }
    assert "1" == redis_client.get(TERM_KEY)
    assert 0 < redis_client.pttl(LEASE_KEY) <= LEASE * 1000
    deadline = time.monotonic() + 2 * LEASE
    while time.monotonic() < deadline:
        assert 1 == election.term
        time.sleep(0.05)
    assert [] == lost


def test_callbacks_run_in_order_on_the_callback_thread(redis_server: RedisServer, make: Make) -> None:
    """Callbacks run in order, on 'tickerq-election-sched-callbacks-1', never on the renewing thread."""
    calls: list[tuple[str, object]] = []
    threads: set[str] = set()

    def record(kind: str) -> Callable[..., None]:
        def callback(*args: object) -> None:
            threads.add(threading.current_thread().name)
            calls.append((kind, args[0]))

        return callback

    election = make(
        redis_server,
        "a",
        on_elected=record("elected"),
        on_demoted=record("demoted"),
        on_new_leader=record("new"),
    )
    election.start()
    wait_for(lambda: election.is_leader)
    election.resign()
    wait_for(lambda: len(calls) >= 4)
    election.stop()
    assert [("new", "a"), ("elected", 1), ("demoted", 1), ("new", None)] == calls
    assert {"tickerq-election-sched-callbacks-1"} == threads
    assert [] == [t.name for t in threading.enumerate() if t.name.startswith("tickerq-election-sched")]


def test_threads_are_named_daemons(redis_server: RedisServer, make: Make) -> None:
    """A leader runs daemons 'tickerq-election-NAME', '...-callbacks-1', '...-deadline'; stop() ends them."""
    seen: list[str | None] = []
    election = make(redis_server, "a", name="reports", on_new_leader=seen.append)
    election.start()
    wait_for(lambda: election.is_leader and seen)  # the callback thread starts with the first callback
    threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-reports")]
    assert {
        "tickerq-election-reports": True,
        "tickerq-election-reports-callbacks-1": True,
        "tickerq-election-reports-deadline": True,
    } == {t.name: t.daemon for t in threads}
    election.stop()
    assert [] == [t.name for t in threads if t.is_alive()]


def test_on_elected_may_work_until_stop_event(redis_server: RedisServer, make: Make) -> None:
    """on_elected may block until its stop_event; resign() sets it and on_demoted follows."""
    order: list[str] = []

    def work(term: int, stop_event: threading.Event) -> None:
        order.append(f"working {term}")
        stop_event.wait(10)
        order.append("stopped working")

    election = make(
        redis_server, "a", on_elected=work, on_demoted=lambda term: order.append(f"demoted {term}")
    )
    election.start()
    wait_for(lambda: order)
    election.resign()
    wait_for(lambda: len(order) == 3, timeout=2)
    assert ["working 1", "stopped working", "demoted 1"] == order


@pytest.mark.slow
def test_raising_callback_is_logged_and_election_goes_on(
    redis_server: RedisServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Callbacks that raise are logged; the node keeps leading and later callbacks still run."""
    demoted: list[int] = []

    def boom(*_: object) -> None:
        raise RuntimeError("boom")

    election = make(redis_server, "a", on_elected=boom, on_new_leader=boom, on_demoted=demoted.append)
    with caplog.at_level(logging.ERROR, logger="tickerq.election.election"):
        election.start()
        wait_for(lambda: election.is_leader)
        time.sleep(2 * LEASE)
        assert 1 == election.term
        election.stop()
    assert [1] == demoted
    # on_new_leader("a"), on_elected(1), on_new_leader(None) once stop() released the lease
    assert 3 == sum("callback" in r.getMessage() and r.exc_info is not None for r in caplog.records)


def test_leadership_changes_are_published(redis_server: RedisServer, make: Make) -> None:
    """Acquiring, resigning and the observed leader are published on the event hub."""
    hub = EventHub()
    events: list[object] = []
    for kind in (LeadershipAcquired, LeadershipLost, LeaderChanged):
        hub.subscribe(kind, events.append)
    election = make(redis_server, "a", events=hub)
    election.start()
    wait_for(lambda: election.is_leader)
    election.resign()
    wait_for(lambda: len(events) >= 4)
    assert [
        LeaderChanged(election="sched", leader="a", term=1),
        LeadershipAcquired(election="sched", node="a", term=1),
        LeadershipLost(election="sched", node="a", term=1, reason="resigned"),
        LeaderChanged(election="sched", leader=None, term=1),
    ] == events


def test_stop_is_fast_with_default_timings(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """With 15 s / 10 s / 2 s, stop() returns in under a second, threads ended and lease deleted."""
    leader = make(redis_server, "a", lease=15, renew_deadline=10, retry_period=2)
    candidate = make(redis_server, "b", lease=15, renew_deadline=10, retry_period=2)
    leader.start()
    wait_for(lambda: leader.is_leader)
    candidate.start()
    threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-")]
    # each: election and deadline watch; no callback was given, so no callback thread started
    assert ["tickerq-election-sched"] * 2 + ["tickerq-election-sched-deadline"] * 2 == sorted(
        t.name for t in threads
    )
    for election in (candidate, leader):
        started = time.monotonic()
        election.stop()
        assert time.monotonic() - started < 0.5
        assert not election.running
        election.stop()
    assert not any(t.is_alive() for t in threads)
    assert 0 == redis_client.exists(LEASE_KEY)


def test_resign_steps_back_then_takes_over_again(redis_server: RedisServer, make: Make) -> None:
    """Alone, a resigned node stays out for about one lease, then leads again with a higher term."""
    election = make(redis_server, "a")
    election.start()
    wait_for(lambda: election.is_leader)
    resigned = time.monotonic()
    election.resign()
    assert not election.is_leader
    wait_for(lambda: election.leader() is None, timeout=RETRY)  # the election thread deletes the lease
    while time.monotonic() < resigned + LEASE * 0.8:
        assert election.leader() is None
        time.sleep(0.05)
    wait_for(lambda: election.is_leader, timeout=LEASE + RETRY + SLACK)
    assert 2 == election.term


def test_lease_taken_from_outside_demotes_the_leader(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """A lease overwritten by another holder demotes the leader at its next renewal."""
    seen: list[str | None] = []
    election = make(redis_server, "a", on_new_leader=seen.append)
    election.start()
    wait_for(lambda: election.is_leader)
    redis_client.hset(LEASE_KEY, mapping={"node": "intruder", "token": "x", "term": "7"})
    assert wait_for(lambda: not election.is_leader) < RETRY + SLACK
    wait_for(lambda: len(seen) == 2)
    assert ["a", "intruder"] == seen


def test_corrupt_lease_key_lapses_and_is_replaced(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the lease key: leader() raises KeyTypeError; a candidate warns once, leads after a lease."""
    redis_client.set(LEASE_KEY, "garbage")
    redis_client.set(TERM_KEY, "not a number")
    election = make(redis_server, "a")
    with pytest.raises(KeyTypeError, match="holds a string, not an election lease"):
        election.leader()
    with caplog.at_level(logging.WARNING, logger="tickerq.election.election"):
        election.start()
        wait_for(lambda: election.is_leader, timeout=LEASE + RETRY + SLACK)
    assert 1 == election.term
    assert 1 == sum("not an election lease" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_leader_demotes_when_redis_stops_and_leads_again_after(
    fault_server: RedisServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped: the leader demotes before its lease lapses, logging once; back empty: a higher term."""
    ended = threading.Event()

    def work(_: int, stop_event: threading.Event) -> None:
        if stop_event.wait(10):
            ended.set()

    election = make(fault_server, "a", on_elected=work)
    election.start()
    wait_for(lambda: election.is_leader)
    first = election.term
    with caplog.at_level(logging.DEBUG, logger="tickerq.election.election"):
        fault_server.stop()
        # the last renewal was sent less than RETRY before the stop, so its lease lapses after LEASE - RETRY
        assert wait_for(lambda: not election.is_leader) < LEASE - RETRY
        ended.wait(LEASE)
        assert ended.is_set()
        failed = failed_attempts(caplog)
        wait_for(lambda: failed_attempts(caplog) >= failed + 2)  # a few more failed attempts
        fault_server.start()
        wait_for(lambda: election.is_leader, timeout=2 * LEASE + RETRY + SLACK)
    assert first is not None
    assert first < (election.term or 0)
    assert 1 == sum("Redis unavailable" in r.getMessage() for r in caplog.records)


def test_leader_read_without_redis_raises_redis_unavailable(fault_server: RedisServer) -> None:
    """leader() on an unreachable Redis raises RedisUnavailableError naming the election."""
    with fault_server.client(retry=Retry(NoBackoff(), 0)) as client:
        observer = LeaderElection(client, KEYS, "observer", "sched")
        fault_server.stop()
        with pytest.raises(RedisUnavailableError, match="could not read the leader of election 'sched'"):
            observer.leader()


@pytest.mark.slow
def test_redis_hanging_demotes_the_leader_and_stop_stays_fast(
    fault_server: RedisServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis paused (SIGSTOP): the leader demotes by its deadline, and stop() still returns within 1 s."""
    election = make(fault_server, "a")
    election.start()
    wait_for(lambda: election.is_leader)
    fault_server.pause()
    try:
        with caplog.at_level(logging.DEBUG, logger="tickerq.election.election"):
            assert wait_for(lambda: not election.is_leader) < LEASE - RETRY
            failed = failed_attempts(caplog)
            wait_for(lambda: failed_attempts(caplog) > failed)  # the next call is now hanging
        started = time.monotonic()
        election.stop()
        assert time.monotonic() - started < 1.0
    finally:
        fault_server.resume()


@pytest.mark.slow
def test_leader_survives_a_quick_redis_restart(fault_server: RedisServer, make: Make) -> None:
    """Redis restarted empty within the deadline: the leader re-creates its lease and keeps its term."""
    election = make(fault_server, "a", lease=4, renew_deadline=3, retry_period=0.25)
    election.start()
    wait_for(lambda: election.is_leader)
    fault_server.restart()
    with fault_server.client(decode_responses=True) as client:
        wait_for(lambda: client.exists(LEASE_KEY))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert 1 == election.term
            time.sleep(0.05)
        assert {"node": "a", "term": "1"} == {
            k: v for k, v in client.hgetall(LEASE_KEY).items() if k != "token"
        }
        assert "1" == client.get(TERM_KEY)


@pytest.mark.slow
def test_stop_with_redis_hanging_is_fast_with_default_timings(fault_server: RedisServer, make: Make) -> None:
    """Redis paused, 15 s / 10 s / 2 s: stop() returns within 0.6 s (call timeout + 0.1 s); threads end."""
    election = make(fault_server, "a", lease=15, renew_deadline=10, retry_period=2)
    election.start()
    wait_for(lambda: election.is_leader)
    threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-")]
    fault_server.pause()
    try:
        started = time.monotonic()
        election.stop()
        assert time.monotonic() - started <= 0.6
        assert [] == [t.name for t in threads if t.is_alive()]
    finally:
        fault_server.resume()


@pytest.mark.slow
def test_stop_while_a_resignation_waits_for_its_reply_is_fast_with_default_timings(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Resigned, its release run but the reply held back, 15 s / 10 s / 2 s: stop() returns within 0.6 s."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2, socket_connect_timeout=2)
        election = LeaderElection(client, KEYS, "a", "sched", lease=15, renew_deadline=10, retry_period=2)
        try:
            election.start()
            wait_for(lambda: election.is_leader)
            threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-")]
            proxy.hold_replies()
            election.resign()
            wait_for(lambda: not redis_client.exists(LEASE_KEY))  # Redis ran the release; no reply yet
            started = time.monotonic()
            election.stop()
            assert time.monotonic() - started <= 0.6
            assert [] == [t.name for t in threads if t.is_alive()]
        finally:
            proxy.pass_replies()
            election.stop()
            client.close()


@pytest.mark.slow
def test_stop_event_is_set_at_the_renew_deadline_while_redis_hangs(
    fault_server: RedisServer, make: Make
) -> None:
    """Redis paused, a renewal hanging across the deadline: stop_event is set when is_leader turns False."""
    # The attempt at 0.75 s would hang until 1.25 s, past the 1 s deadline.
    ended: list[threading.Event] = []
    election = make(
        fault_server, "a", retry_period=0.75, on_elected=lambda _, stop_event: ended.append(stop_event)
    )
    election.start()
    wait_for(lambda: ended)
    fault_server.pause()
    try:
        wait_for(lambda: not election.is_leader)
        not_leader = time.monotonic()
        wait_until(ended[0].is_set, timeout=1, interval=0.001)
        assert time.monotonic() - not_leader < 0.1
    finally:
        fault_server.resume()


@pytest.mark.slow
def test_slow_event_subscriber_does_not_stall_renewal(redis_server: RedisServer, make: Make) -> None:
    """A subscriber that blocks for two leases runs on the callback thread; the leader keeps renewing."""
    hub = EventHub()
    ran_on: list[str] = []

    def slow(_: LeadershipAcquired) -> None:
        ran_on.append(threading.current_thread().name)
        time.sleep(2 * LEASE)

    hub.subscribe(LeadershipAcquired, slow)
    election = make(redis_server, "a", events=hub)
    election.start()
    wait_for(lambda: ran_on)
    assert ["tickerq-election-sched-callbacks-1"] == ran_on
    deadline = time.monotonic() + 2 * LEASE
    while time.monotonic() < deadline:
        assert 1 == election.term
        time.sleep(0.05)


def test_subscriber_resigning_keeps_events_in_order(redis_server: RedisServer, make: Make) -> None:
    """A LeadershipAcquired subscriber that resigns: every subscriber sees Acquired before Lost."""
    hub = EventHub()
    events: list[object] = []
    election = make(redis_server, "a", events=hub)
    hub.subscribe(LeadershipAcquired, lambda _: election.resign())
    for kind in (LeadershipAcquired, LeadershipLost):
        hub.subscribe(kind, events.append)
    election.start()
    wait_for(lambda: len(events) >= 2)
    assert [
        LeadershipAcquired(election="sched", node="a", term=1),
        LeadershipLost(election="sched", node="a", term=1, reason="resigned"),
    ] == events[:2]


def test_renew_reports_lost_when_a_later_term_began(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Renewing a vanished lease re-creates it only if no later term began: else VACANT, nothing written."""
    client = redis_server.client()
    a, b = ElectionLease(KEYS, "sched", "a", 3000), ElectionLease(KEYS, "sched", "b", 3000)
    assert 1 == a.acquire(client, "ta", 0).term
    redis_client.delete(LEASE_KEY)
    assert LeaseReply(Status.OURS, "a", 1, 3000) == a.renew(client, "ta", 1)  # nobody took it: re-created
    redis_client.delete(LEASE_KEY)
    assert LeaseReply(Status.OURS, "b", 2, 3000) == b.acquire(client, "tb", 0)
    assert b.release(client, "tb")
    assert LeaseReply(Status.VACANT, None, 2, -2) == a.renew(client, "ta", 1)
    assert 0 == redis_client.exists(LEASE_KEY)
    assert "2" == redis_client.get(TERM_KEY)


def test_leader_whose_lease_vanished_after_a_later_term_demotes(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """A leads 1; lease deleted, B leads 2 and resigns: A demotes at its next renewal; no term goes back."""
    hub = EventHub()
    lost: list[LeadershipLost] = []
    hub.subscribe(LeadershipLost, lost.append)
    election = make(redis_server, "a", events=hub)
    election.start()
    wait_for(lambda: election.is_leader)
    redis_client.delete(LEASE_KEY)
    other = ElectionLease(KEYS, "sched", "b", 3000)
    assert 2 == other.acquire(redis_server.client(), "tb", 0).term
    assert other.release(redis_server.client(), "tb")
    assert wait_for(lambda: not election.is_leader, timeout=RETRY + NOISE) < RETRY + NOISE
    assert "1" != redis_client.hget(LEASE_KEY, "term")
    wait_for(lambda: lost)
    assert "lease vanished and term 2 began since" == lost[0].reason
    wait_for(lambda: election.is_leader, timeout=RETRY + NOISE)
    assert 3 == election.term


def test_renew_finding_a_lower_term_keeps_the_lease_vacant(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Renewal finds a lower term (Redis lost its data): the lease stays vacant a lease; terms go on above."""
    client = redis_server.client()
    old, fresh = ElectionLease(KEYS, "sched", "old", 3000), ElectionLease(KEYS, "sched", "fresh", 3000)
    redis_client.set(TERM_KEY, 4)
    assert 5 == old.acquire(client, "to", 0).term
    redis_client.flushall()
    assert LeaseReply(Status.OURS, "fresh", 1, 3000) == fresh.acquire(client, "tf", 0)
    assert LeaseReply(Status.HELD, None, 5, 3000) == old.renew(client, "to", 5)
    assert "5" == redis_client.get(TERM_KEY)
    assert (Status.HELD, None, 5) == attrs.astuple(fresh.renew(client, "tf", 1))[:3]
    redis_client.pexpire(LEASE_KEY, 1)
    wait_for(lambda: not redis_client.exists(LEASE_KEY))
    assert 6 == fresh.acquire(client, "tf2", 0).term


@pytest.mark.slow
def test_old_leader_after_redis_data_loss_overlaps_one_retry_period_at_most(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """Data lost: a fresh node leads 1 beside the old term 5 for at most the old's retry period; then 6."""
    redis_client.set(TERM_KEY, 4)
    old = make(redis_server, "old", lease=3, renew_deadline=2, retry_period=1)
    old.start()
    wait_for(lambda: old.is_leader)
    assert 5 == old.term
    # Lose the data just after a renewal, so that the fresh node is elected before the next.
    wait_for(lambda: redis_client.pttl(LEASE_KEY) < 2500)
    wait_for(lambda: redis_client.pttl(LEASE_KEY) > 2900)
    redis_client.flushall()
    fresh = make(redis_server, "fresh")
    fresh.start()
    wait_for(lambda: fresh.is_leader, timeout=0.5)
    assert 1 == fresh.term  # the documented limit: the terms restarted...
    assert wait_for(lambda: not old.is_leader, timeout=1 + NOISE) < 1 + NOISE  # ...for one retry period
    assert wait_for(lambda: not fresh.is_leader, timeout=RETRY + NOISE) < RETRY + NOISE
    assert int(redis_client.get(TERM_KEY) or 0) >= 5
    wait_for(lambda: old.is_leader or fresh.is_leader, timeout=3 + 1 + NOISE)
    assert 6 == (old.term or fresh.term)


def test_forked_child_does_not_lead(redis_server: RedisServer, redis_client: redis.Redis, make: Make) -> None:
    """A child forked from the leader neither leads nor runs threads; its stop() keeps the parent's lease."""
    election = make(redis_server, "a")
    election.start()
    wait_for(lambda: election.is_leader)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        report = f"{election.is_leader} {election.term} {election.running}"
        election.resign()
        election.stop()
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert "False None False" == pipe.read()
    assert election.is_leader
    assert "a" == redis_client.hget(LEASE_KEY, "node")


# -- stopping ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("during", ["idle", "renewal"])
def test_stop_hands_over_at_once_when_redis_is_far(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make, during: str
) -> None:
    """Redis 150 ms away: stop() still deletes the lease, so another node leads within its retry period.

    Stopped while idle, or while a renewal's reply is on its way.
    """
    proxy = FaultProxy(redis_server.host, redis_server.port, reply_delay=0.15)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2, socket_connect_timeout=2)
    far = LeaderElection(client, KEYS, "a", "sched", lease=3, renew_deadline=2, retry_period=0.5)
    try:
        far.start()
        wait_for(lambda: far.is_leader)
        candidate = make(redis_server, "b")  # retry period RETRY
        candidate.start()
        wait_for(lambda: candidate.leader() == "a" and not candidate.is_leader)
        if during == "renewal":  # Redis has just run a renewal; its reply arrives 150 ms later
            wait_for(lambda: redis_client.pttl(LEASE_KEY) < 2800)
            wait_for(lambda: redis_client.pttl(LEASE_KEY) > 2970, timeout=2)
        else:  # the last reply has arrived, the next renewal is 250 ms away
            wait_for(lambda: 2700 < redis_client.pttl(LEASE_KEY) < 2750, timeout=2)
        started = time.monotonic()
        far.stop()
        stopped = time.monotonic()
        assert stopped - started < 0.6 + NOISE
        assert "a" != redis_client.hget(LEASE_KEY, "node")  # released, not left to lapse (2.5 s)
        assert wait_for(lambda: candidate.is_leader, timeout=RETRY + SLACK) < RETRY + SLACK
    finally:
        far.stop()
        client.close()
        proxy.close()


def test_request_stop_returns_at_once_and_wait_stopped_joins(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """request_stop() demotes and returns without waiting; wait_stopped() joins the threads, lease gone."""
    demoted: list[int] = []
    election = make(redis_server, "a", on_demoted=demoted.append)
    assert election.wait_stopped(0)  # never started: nothing to wait for
    election.start()
    wait_for(lambda: election.is_leader)
    assert not election.wait_stopped(0)  # running: stop was not requested
    threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-sched")]
    election.request_stop()
    assert not election.is_leader
    assert not election.running
    assert election.wait_stopped(2)
    assert [] == [t.name for t in threads if t.is_alive()]
    assert [1] == demoted
    assert 0 == redis_client.exists(LEASE_KEY)
    assert election.wait_stopped(0)  # again: nothing left


@pytest.mark.slow
def test_context_close_stops_its_elections_together_while_redis_hangs(fault_server: RedisServer) -> None:
    """Four leaders (15/10/2 s), Redis paused: RedisContext.close() ends them all in 0.7 s, not 4 x 0.5 s."""
    container = add_tickerq(lambda o: o.add_redis(configuration=fault_server.address))
    container.init_resources()
    try:
        ctx = container.redis_context()
        elections = [ctx.leader_election(f"chores-{i}") for i in range(4)]
        for election in elections:
            election.start()
        wait_for(lambda: all(election.is_leader for election in elections))
        threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-chores-")]
        # each: election and deadline timer; callbacks run on the node's shared tickerq-dispatch workers
        assert 8 == len(threads)
        fault_server.pause()  # each leader's next call, the final release, now hangs
        try:
            started = time.monotonic()
            ctx.close()
            assert time.monotonic() - started <= 0.7
        finally:
            fault_server.resume()
        assert [] == [t.name for t in threads if t.is_alive()]
        assert not any(election.is_leader or election.running for election in elections)
    finally:
        container.shutdown_resources()


def test_stop_from_on_elected_right_after_a_promotion_ends_every_thread(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """request_stop() from on_elected, as the promotion lands: wait_stopped() ends all threads, lease gone."""
    demoted: list[int] = []
    election: LeaderElection = make(
        redis_server, "a", on_elected=lambda *_: election.request_stop(), on_demoted=demoted.append
    )
    election.start()
    wait_for(lambda: demoted)
    assert election.wait_stopped(2)
    assert [] == [t.name for t in threading.enumerate() if t.name.startswith("tickerq-election-sched")]
    assert [1] == demoted
    assert 0 == redis_client.exists(LEASE_KEY)


def test_request_stop_as_a_round_begins_is_not_lost(redis_server: RedisServer, make: Make) -> None:
    """request_stop() just as a round begins ends the election at once, every time.

    On a ManualClock a wait ends only when the clock is advanced, so a stop
    that the loop missed would hang until the deadline instead of costing one
    retry period.
    """
    leader = make(redis_server, "b")
    leader.start()
    wait_for(lambda: leader.is_leader)
    for _ in range(20):
        clock = ManualClock()
        seen: list[str | None] = []
        candidate = make(redis_server, "a", clock=clock, on_new_leader=seen.append)
        candidate.start()
        wait_for(seen.copy)  # its first round found b leading: it waits one retry period, on the clock
        clock.advance(RETRY)  # the next round begins now...
        candidate.request_stop()  # ...and the stop lands somewhere at its beginning
        started = time.monotonic()
        assert candidate.wait_stopped(2)
        assert time.monotonic() - started < 0.5
        assert not candidate.running


@pytest.mark.slow
def test_request_stop_then_wait_stopped_by_one_deadline_while_redis_is_frozen(
    fault_server: RedisServer, make: Make
) -> None:
    """Redis paused, a leader and a candidate: request_stop() both, then both end by one 0.7 s deadline."""
    leader = make(fault_server, "a", lease=15, renew_deadline=10, retry_period=2)
    leader.start()
    wait_for(lambda: leader.is_leader)
    candidate = make(fault_server, "b", lease=15, renew_deadline=10, retry_period=2)
    candidate.start()
    wait_for(lambda: candidate.leader() == "a")
    threads = [t for t in threading.enumerate() if t.name.startswith("tickerq-election-")]
    fault_server.pause()
    try:
        started = time.monotonic()
        for election in (leader, candidate):
            election.request_stop()
            assert not election.running
        assert not leader.is_leader
        assert time.monotonic() - started < 0.1  # no waiting, no I/O
        assert LeaderElection.stop_all([leader, candidate], timeout=0.7)
        assert time.monotonic() - started <= 0.7
        assert [] == [t.name for t in threads if t.is_alive()]
    finally:
        fault_server.resume()


def test_wait_stopped_while_a_callback_blocks(
    redis_server: RedisServer, redis_client: redis.Redis, make: Make
) -> None:
    """A callback that ignores stop_event: the election still stops and hands over; only the callback waits.

    request_stop() sets stop_event; wait_stopped() reports False while the
    callback blocks, yet the election's thread and deadline watch have ended
    and the lease is gone. Once the callback returns, on_demoted runs and
    wait_stopped() is True.
    """
    release = threading.Event()
    events: list[threading.Event] = []
    order: list[str] = []

    def stubborn(term: int, stop_event: threading.Event) -> None:
        events.append(stop_event)
        release.wait(10)
        order.append(f"elected {term} returned")

    election = make(
        redis_server, "a", on_elected=stubborn, on_demoted=lambda term: order.append(f"demoted {term}")
    )
    election.start()
    wait_for(lambda: events)
    election.request_stop()
    assert events[0].is_set()
    started = time.monotonic()
    assert not election.wait_stopped(0.3)
    assert time.monotonic() - started < 0.3 + NOISE
    alive = {t.name for t in threading.enumerate() if t.name.startswith("tickerq-election-sched")}
    assert {"tickerq-election-sched-callbacks-1"} == alive
    assert 0 == redis_client.exists(LEASE_KEY)
    assert [] == order
    release.set()
    assert election.wait_stopped(2)
    assert ["elected 1 returned", "demoted 1"] == order
    assert [] == [t.name for t in threading.enumerate() if t.name.startswith("tickerq-election-sched")]


@pytest.mark.slow
def test_renew_deadline_counts_on_the_elections_clock(fault_server: RedisServer, make: Make) -> None:
    """ManualClock, renewals failing (Redis paused): the leader leads until the clock passes its deadline.

    is_leader stays True and stop_event unset at 9.99 s of 10 s, then both
    end at once when the clock moves past the deadline, whatever real time
    says.
    """
    clock = ManualClock()
    ended: list[threading.Event] = []
    election = make(
        fault_server,
        "a",
        lease=15,
        renew_deadline=10,
        retry_period=2,
        clock=clock,
        on_elected=lambda _, stop_event: ended.append(stop_event),
    )
    election.start()
    wait_for(lambda: ended)  # elected at clock 0 (relative)
    fault_server.pause()
    try:
        clock.advance(9.99)  # its retry periods passed: it tries to renew, and that hangs
        assert election.is_leader
        assert not ended[0].is_set()
        clock.advance(0.02)
        assert not election.is_leader
        wait_until(ended[0].is_set, timeout=1, interval=0.001)
    finally:
        fault_server.resume()


def test_elections_keep_their_order_on_a_shared_dispatcher(redis_server: RedisServer, make: Make) -> None:
    """Two elections on one shared 3-worker dispatcher: each one's callbacks run in order, on its workers.

    Stopping an election does not stop the shared dispatcher.
    """
    shared = Dispatcher("tickerq-test-shared", workers=3)
    calls: dict[str, list[tuple[str, object]]] = defaultdict(list)
    threads: set[str] = set()

    def record(name: str, kind: str) -> Callable[..., None]:
        def callback(*args: object) -> None:
            threads.add(threading.current_thread().name)
            time.sleep(0.01)  # gives the other workers a chance to overtake, were order not kept
            calls[name].append((kind, args[0]))

        return callback

    elections = [
        make(
            redis_server,
            "a",
            name=name,
            dispatcher=shared,
            on_elected=record(name, "elected"),
            on_demoted=record(name, "demoted"),
            on_new_leader=record(name, "new"),
        )
        for name in ("one", "two")
    ]
    for election in elections:
        election.start()
    wait_for(lambda: all(election.is_leader for election in elections))
    for election in elections:
        election.resign()
    wait_for(lambda: all(len(calls[name]) >= 4 for name in ("one", "two")))
    for election in elections:
        election.stop()
    for name in ("one", "two"):
        assert [("new", "a"), ("elected", 1), ("demoted", 1), ("new", None)] == calls[name]
    assert threads <= {f"tickerq-test-shared-{i}" for i in (1, 2, 3)}
    assert 42 == shared.submit(lambda: 42).result(timeout=2)
    shared.request_stop()
    assert shared.wait_stopped(time.monotonic() + 1)


# -- node processes --------------------------------------------------------------


class Node:
    """A node process running ``tests/election_node.py``."""

    def __init__(
        self, server: RedisServer, node_id: str, timings: Timings = (LEASE, DEADLINE, RETRY)
    ) -> None:
        self.node_id = node_id
        args = [str(server.port), node_id, "sched", *map(str, timings)]
        self.process = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        assert "ready" == self.process.stdout.readline().strip()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("stop")
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


Timings = tuple[float, float, float]
Cluster = Callable[..., dict[str, Node]]


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    """Starts node processes n1..nN (with the given timings); stops (or kills) them after the test."""
    nodes: list[Node] = []

    def start(count: int, timings: Timings = (LEASE, DEADLINE, RETRY)) -> dict[str, Node]:
        batch = [Node(redis_server, f"n{len(nodes) + i + 1}", timings) for i in range(count)]
        nodes.extend(batch)
        for node in batch:
            node.wait_ready()
        return {node.node_id: node for node in batch}

    yield start
    for node in nodes:
        node.close()


def holder(client: redis.Redis) -> str | None:
    """The node holding the lease in Redis ('' while kept vacant counts as none)."""
    value = client.hget(LEASE_KEY, "node")
    return str(value) if value else None


def wait_for_new_leader(client: redis.Redis, old: str, timeout: float = LEASE + RETRY + 5) -> float:
    """Wait until a node other than ``old`` holds the lease; return the seconds it took."""
    return wait_for(lambda: holder(client) not in (None, old), timeout=timeout)


def wait_for_renewals(client: redis.Redis, count: int) -> None:
    """Wait until the lease was renewed ``count`` times: its TTL went back up (no sleeping a guess)."""
    renewals, last = 0, client.pttl(LEASE_KEY)

    def renewed() -> bool:
        nonlocal renewals, last
        ttl = client.pttl(LEASE_KEY)
        renewals, last = renewals + (ttl > last), ttl
        return renewals >= count

    wait_until(renewed, timeout=5 * RETRY, interval=0.005)


def samples(client: redis.Redis) -> list[str]:
    """The beliefs the nodes sampled (see ``check_beliefs``), in order."""
    return [str(sample) for sample in client.lrange("test:samples", 0, -1)]


def wait_for_belief(client: redis.Redis, term: int) -> str:
    """Wait until a node was sampled twice believing it leads ``term`` (or later); return that node."""

    def believer() -> str | None:
        latest = [sample.split() for sample in client.lrange("test:samples", -2, -1)]
        if len(latest) == 2 and all(int(sample[1]) >= term for sample in latest):
            return str(latest[-1][0])
        return None

    return str(wait_until(believer))


def check_beliefs(samples: list[str]) -> list[int]:
    """Assert that no two leaderships were believed at once and terms rose in time; return the terms.

    A sample ``NODE TERM S1 S2 KIND`` shows the node believing it leads
    ``TERM`` (by ``election.term``, or by that leadership's ``stop_event`` not
    being set yet) at an instant between the Redis increments ``S1 < S2``. A
    node believes in one term for one unbroken span, so that span holds an
    instant before its samples' smallest S2 (``first``) and one after their
    largest S1 (``last``), and everything between. Two leaderships surely
    overlapped when each one's ``first`` comes before the other's ``last``;
    this holds for a leadership sampled once, too. A higher term surely began
    too early when its ``first`` comes before a lower term's ``last``.
    """
    first: dict[tuple[int, str], int] = {}
    last: dict[tuple[int, str], int] = {}
    for sample in samples:
        node, term_text, s1, s2 = sample.split()[:4]
        key = (int(term_text), node)
        first[key] = min(first.get(key, int(s2)), int(s2))
        last[key] = max(last.get(key, int(s1)), int(s1))
    nodes_per_term: dict[int, set[str]] = defaultdict(set)
    for term, node in first:
        nodes_per_term[term].add(node)
    assert dict.fromkeys(nodes_per_term, 1) == {term: len(nodes) for term, nodes in nodes_per_term.items()}
    for x, y in itertools.combinations(first, 2):
        assert not (first[x] < last[y] and first[y] < last[x]), f"{x} and {y} were believed at the same time"
    for x, y in itertools.permutations(first, 2):
        assert not (x[0] < y[0] and first[y] < last[x]), f"term {y} was believed before term {x} ended"
    return sorted(nodes_per_term)


def test_check_beliefs_catches_overlaps_of_single_samples() -> None:
    """check_beliefs fails on a leadership sampled once inside another's span, or a term out of order."""
    assert [1, 2] == check_beliefs(["a 1 1 2 term", "a 1 5 6 event", "b 2 7 8 term"])
    with pytest.raises(AssertionError, match="believed at the same time"):
        check_beliefs(["a 1 1 2 term", "b 2 3 4 term", "a 1 5 6 event"])
    with pytest.raises(AssertionError, match="believed before term"):
        check_beliefs(["b 2 1 2 term", "a 1 3 4 term"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_leader_new_leader_within_lease_plus_retry(
    cluster: Cluster, redis_client: redis.Redis
) -> None:
    """SIGKILL the leader: another node leads within lease + retry period; terms increase."""
    nodes = cluster(3)
    for term in (1, 2):
        leader = wait_for_belief(redis_client, term)
        wait_for_renewals(redis_client, 2)
        nodes.pop(leader).kill()
        assert wait_for_new_leader(redis_client, leader) < LEASE + RETRY + NOISE
    wait_for_belief(redis_client, 3)
    assert [1, 2, 3] == check_beliefs(samples(redis_client))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resign_new_leader_within_one_retry_period(cluster: Cluster, redis_client: redis.Redis) -> None:
    """resign() hands over: another node leads within one retry period (1 s here); the resigner stays out."""
    retry = 1.0
    nodes = cluster(3, (3.0, 2.0, retry))
    for term in (1, 2):
        leader = wait_for_belief(redis_client, term)
        nodes[leader].send("resign")
        assert wait_for_new_leader(redis_client, leader, timeout=retry + NOISE) < retry + NOISE
    wait_for_belief(redis_client, 3)
    assert [1, 2, 3] == check_beliefs(samples(redis_client))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_at_most_one_node_believes_it_leads(cluster: Cluster, redis_client: redis.Redis) -> None:
    """Five nodes through resignations and SIGKILLs: never two believers at once, terms strictly increase."""
    nodes = cluster(5)
    for term, action in enumerate(("resign", "kill", "resign", "kill", "resign"), start=1):
        leader = wait_for_belief(redis_client, term)
        wait_for_renewals(redis_client, 1)
        if action == "kill":
            nodes.pop(leader).kill()
        else:
            nodes[leader].send(action)
        wait_for_new_leader(redis_client, leader)
    wait_for_belief(redis_client, 6)
    for node in nodes.values():
        node.close()  # leadership may move on while they stop, one by one
    terms = check_beliefs(samples(redis_client))
    assert [1, 2, 3, 4, 5, 6] == terms[:6]
    elected = [int(line.split()[2]) for line in redis_client.lrange("test:log", 0, -1) if " elected " in line]
    assert sorted(set(elected)) == sorted(elected)
    assert set(terms) <= set(elected)
