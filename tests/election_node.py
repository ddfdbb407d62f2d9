"""One election node in a process of its own, for the multi-process election tests.

Usage: ``python tests/election_node.py PORT NODE NAME LEASE RENEW_DEADLINE RETRY``
(durations in seconds). Prints ``ready`` once started, then obeys stdin lines:
``resign``, and ``stop`` (stop the election and exit).

Evidence goes to Redis, ordered by Redis itself rather than by any clock: every
few ms a sampler thread takes ``s1 = INCR test:seq``, reads ``election.term``,
takes ``s2 = INCR test:seq`` and, when it believed it led, pushes
``"NODE TERM S1 S2"`` onto ``test:samples``: the belief held at some instant
between the two increments.
"""

from __future__ import annotations

import sys
import threading
from datetime import timedelta

import redis

from tickerq.redis.election import LeaderElection
from tickerq.redis.keys import Keys

SAMPLE_EVERY = 0.004


def sample(client: redis.Redis, election: LeaderElection, node: str, stop: threading.Event) -> None:
    """Record this node's belief, bracketed by two Redis increments, until ``stop``."""
    while not stop.wait(SAMPLE_EVERY):
        try:
            s1 = client.incr("test:seq")
            term = election.term
            s2 = client.incr("test:seq")
            if term is not None:
                client.rpush("test:samples", f"{node} {term} {s1} {s2}")
        except redis.RedisError:
            continue


def main() -> None:
    """Run the node until ``stop`` on stdin (or stdin closes)."""
    port, node, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    lease, deadline, retry = (timedelta(seconds=float(value)) for value in sys.argv[4:7])
    client = redis.Redis(port=port, socket_timeout=5)
    election = LeaderElection(
        redis.Redis(port=port, socket_timeout=5),
        Keys("tickerq:"),
        node,
        name,
        lease=lease,
        renew_deadline=deadline,
        retry_period=retry,
        on_elected=lambda term, _: client.rpush("test:log", f"{node} elected {term}"),
        on_demoted=lambda term: client.rpush("test:log", f"{node} demoted {term}"),
    )
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(client, election, node, stop), daemon=True)
    election.start()
    sampler.start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "resign":
            election.resign()
        elif line.strip() == "stop":
            break
    stop.set()
    sampler.join()
    election.stop()
    client.close()


if __name__ == "__main__":
    main()
