"""Leader failover time after the leader process is killed with SIGKILL.

Three node processes (``--nodes``) run ``LeaderElection`` on one Redis. Each run
waits until a leader has held the lease for a random part of a retry period
(so the kill lands anywhere in its renewal cycle), reads the lease's remaining
TTL, kills the leader with SIGKILL and polls Redis every 2 ms until another
node holds the lease; a fresh node replaces the dead one before the next run.
Printed per profile: failover time (median, min, max), the lease's remaining TTL
at the kill, and how long after that TTL ran out the next node took over.

Profiles: the defaults (lease 15 s, renew deadline 10 s, retry period 2 s; about
15 s per run) and a 3 s lease (3 s / 2 s / 0.5 s).

Run ``python benchmarks/election_failover.py`` (``--runs 10``,
``--default-runs 10``; ``--quick`` is 3 and 2). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta

import redis
from _common import describe_machine

from tickerq._redis.keys import Keys
from tickerq.election.election import LeaderElection
from tickerq.testing import RedisServer

KEYS = Keys("tickerq:")
NAME = "bench"
PROFILES = {"defaults": (15.0, 10.0, 2.0), "3 s lease": (3.0, 2.0, 0.5)}


def run_node(port: int, node: str, lease: float, deadline: float, retry: float) -> None:
    """Node mode: campaign until stdin closes."""
    election = LeaderElection(
        redis.Redis(port=port, socket_timeout=5),
        KEYS,
        node,
        NAME,
        lease=timedelta(seconds=lease),
        renew_deadline=timedelta(seconds=deadline),
        retry_period=timedelta(seconds=retry),
    )
    election.start()
    print("ready", flush=True)
    sys.stdin.read()
    election.stop()


def spawn(port: int, node: str, timings: tuple[float, float, float]) -> subprocess.Popen[str]:
    """Start a node process and wait until its election runs."""
    args = [sys.executable, __file__, "--node", str(port), node, *map(str, timings)]
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit(f"node {node} did not start")
    return process


def wait_holder(admin: redis.Redis, unlike: str | None, timeout: float, poll: float = 0.002) -> str:
    """Wait until a node other than ``unlike`` holds the lease; return it."""
    key = KEYS.election(NAME)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = admin.hget(key, "node")
        if holder and holder.decode() != unlike:
            return str(holder.decode())
        time.sleep(poll)
    raise SystemExit(f"no new leader within {timeout} s")


def measure(server: RedisServer, admin: redis.Redis, name: str, runs: int, count: int) -> None:
    """Run one profile and print its line."""
    timings = PROFILES[name]
    lease, _, retry = timings
    admin.flushall()
    nodes = {f"{name[:1]}{i}": spawn(server.port, f"{name[:1]}{i}", timings) for i in range(count)}
    serial = count
    failovers: list[float] = []
    remaining: list[float] = []
    try:
        leader = wait_holder(admin, None, lease + retry + 5)
        for _ in range(runs):
            time.sleep(retry + random.uniform(0, retry))  # a random phase of the renewal cycle
            ttl = admin.pttl(KEYS.election(NAME)) / 1000
            victim = nodes.pop(leader)
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            leader = wait_holder(admin, leader, lease + retry + 5)
            failovers.append(time.monotonic() - killed)
            remaining.append(ttl)
            victim.wait()
            for stream in (victim.stdin, victim.stdout):
                if stream is not None:
                    stream.close()
            node = f"{name[:1]}{serial}"
            serial += 1
            nodes[node] = spawn(server.port, node, timings)
    finally:
        for process in nodes.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
    after = [f - r for f, r in zip(failovers, remaining, strict=True)]
    print(
        f"{name:<10} {'/'.join(f'{t:g}' for t in timings) + ' s':<13} {runs:>4} "
        f"{statistics.median(failovers):>8.2f} {min(failovers):>7.2f} {max(failovers):>7.2f} "
        f"{statistics.median(remaining):>9.2f} {1000 * statistics.median(after):>9.0f} "
        f"{1000 * max(after):>9.0f} {lease + retry:>11g}",
        flush=True,
    )


def main() -> None:
    """Parse the options, then run the profiles against a fresh redis-server."""
    if len(sys.argv) > 1 and sys.argv[1] == "--node":
        port, node, *timings = sys.argv[2:]
        run_node(int(port), node, *map(float, timings))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs with the 3 s lease")
    parser.add_argument("--default-runs", type=int, default=10, help="runs with the 15 s default lease")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 and 2 runs")
    options = parser.parse_args()
    runs = {"3 s lease": 3 if options.quick else options.runs}
    runs["defaults"] = 2 if options.quick else options.default_runs
    with RedisServer() as server, server.client() as admin:
        print(describe_machine(admin))
        print(f"{options.nodes} node processes; failover: SIGKILL of the leader until another holds it")
        print(
            f"{'profile':<10} {'lease/dl/rt':<13} {'runs':>4} {'median s':>8} {'min s':>7} {'max s':>7} "
            f"{'TTL left s':>9} {'after ms':>9} {'max ms':>9} {'lease+retry':>11}"
        )
        for name in ("3 s lease", "defaults"):
            if runs[name] > 0:
                measure(server, admin, name, runs[name], options.nodes)


if __name__ == "__main__":
    main()
