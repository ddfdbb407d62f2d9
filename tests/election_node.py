"""One election node in a process of its own, for the multi-process election tests.

Usage: ``python tests/election_node.py PORT NODE NAME LEASE RENEW_DEADLINE RETRY``
(durations in seconds). Prints ``ready`` once started, then obeys stdin lines:
``resign``, and ``stop`` (stop the election and exit).

Evidence goes to Redis, ordered by Redis itself rather than by any clock: every
few ms a sampler thread takes ``s1 = INCR test:seq``, reads ``election.term``
and which ``stop_event`` of the leaderships ``on_elected`` was given is not
set yet, takes ``s2 = INCR test:seq`` and pushes ``"NODE TERM S1 S2 term"``
when ``election.term`` was a term and ``"NODE TERM S1 S2 event"`` for each
unset ``stop_event`` onto ``test:samples``: a belief held at some instant
between the two increments.
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta

import redis

from tickerq._redis.keys import Keys
from tickerq.election.election import LeaderElection

SAMPLE_EVERY = 0.004


class Sampler:
    """Records this node's beliefs, bracketed by two Redis increments, until ``stop``."""

    def __init__(self, client: redis.Redis, node: str) -> None:
        self.client = client
        self.node = node
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._leaderships: list[tuple[int, threading.Event]] = []

    def elected(self, term: int, stop_event: threading.Event) -> None:
        """``on_elected``: from now on, sample whether ``stop_event`` is set."""
        with self._lock:
            self._leaderships.append((term, stop_event))
        self.client.rpush("test:log", f"{self.node} elected {term}")

    def run(self, election: LeaderElection) -> None:
        """Sample every few ms until ``stop``."""
        while not self.stop.wait(SAMPLE_EVERY):
            try:
                s1 = self.client.incr("test:seq")
                term = election.term
                with self._lock:
                    open_terms = [t for t, stop_event in self._leaderships if not stop_event.is_set()]
                s2 = self.client.incr("test:seq")
            except redis.RedisError:
                continue
            with self._lock:  # a set stop_event stays set: no need to sample it again
                self._leaderships = [(t, e) for t, e in self._leaderships if not e.is_set()]
            samples = [f"{self.node} {t} {s1} {s2} event" for t in open_terms]
            if term is not None:
                samples.append(f"{self.node} {term} {s1} {s2} term")
            if samples:
                try:
                    self.client.rpush("test:samples", *samples)
                except redis.RedisError:
                    continue


def main() -> None:
    """Run the node until ``stop`` on stdin (or stdin closes)."""
    port, node, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    lease, deadline, retry = (timedelta(seconds=float(value)) for value in sys.argv[4:7])
    client = redis.Redis(port=port, socket_timeout=5)
    sampler = Sampler(client, node)
    election = LeaderElection(
        redis.Redis(port=port, socket_timeout=5),
        Keys("tickerq:"),
        node,
        name,
        lease=lease,
        renew_deadline=deadline,
        retry_period=retry,
        on_elected=sampler.elected,
        on_demoted=lambda term: client.rpush("test:log", f"{node} demoted {term}"),
    )
    thread = threading.Thread(target=sampler.run, args=(election,), daemon=True)
    election.start()
    thread.start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "resign":
            election.resign()
        elif line.strip() == "stop":
            break
    election.stop()  # sampled while stopping too
    sampler.stop.set()
    thread.join()
    client.close()


if __name__ == "__main__":
    main()
