"""The scheduler's Redis job store at scale: memory per pending job, claim latency, round trips.

1. Memory per pending job without a request: 100,000 jobs (32-hex-digit ids and function
   ``SendEmail``; then 36-char ids and a 21-char function name), due in an hour, added with
   ``add_jobs`` in batches of 1,000; the figure is
   the ``INFO memory`` ``used_memory`` delta per job, and the sum of ``MEMORY USAGE ...
   SAMPLES 0`` over the store's keys per job. Target: <= 300 bytes.
2. Claim latency with N pending jobs (N = 1,000 and 1,000,000; ``--quick``: 100,000): N jobs
   due in an hour are loaded with ``add_jobs`` batches of 5,000, plus 4,000 jobs due now;
   then ``claim_due(limit=10)`` is timed 400 times in a row (client-side median/p95, and the
   Redis-side script time per call from ``INFO commandstats``). A second row times claims
   out of a backlog: all N jobs due now. Target: the 1M figure <= 2x the 1k figure.
3. Round trips per job, amortised, counted on the client (one request written = one round
   trip): 1,000 jobs through add -> claim -> start -> finish, in the batch sizes given, with
   ``start`` as its own call or folded into ``claim_due(start=True)``. Target: <= 3.

    python benchmarks/scheduler_store.py [--quick]

Set TICKERQ_REDIS_SERVER to choose the redis-server binary.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from _common import counting_client, describe_machine, percentile

from tickerq._redis.keys import Keys
from tickerq.scheduler.model import FunctionLimits, NewJob, Outcome, OutcomeKind
from tickerq.scheduler.redis_store import RedisJobStore
from tickerq.testing import RedisServer

KEYS = Keys("tickerq:")
HOUR_MS = 3_600_000
FUNCTION = "SendEmail"
LIMITS = FunctionLimits(name=FUNCTION, free_slots=10)


def ids(n: int, *, dashed: bool = False) -> list[str]:
    return [str(uuid.uuid4()) if dashed else uuid.uuid4().hex for _ in range(n)]


def load(
    store: RedisJobStore,
    n: int,
    *,
    due_ms: int | None,
    batch: int,
    function: str = FUNCTION,
    dashed: bool = False,
) -> None:
    """Add ``n`` jobs without a request, due at ``due_ms`` (None: now)."""
    for start in range(0, n, batch):
        chunk = ids(min(batch, n - start), dashed=dashed)
        store.add_jobs([NewJob(id=job_id, function=function, due_ms=due_ms) for job_id in chunk])


def memory_per_job(server: RedisServer, n: int, function: str, *, dashed: bool) -> None:
    with server.client() as admin:
        admin.flushall()
        store = RedisJobStore(admin, KEYS)
        store.add_jobs([NewJob(id="warm-up", function="Other")])  # scripts loaded, counters exist
        before = int(admin.info("memory")["used_memory"])
        load(store, n, due_ms=store.now_ms() + HOUR_MS, batch=1000, function=function, dashed=dashed)
        after = int(admin.info("memory")["used_memory"])
        usage = 0
        for key in admin.scan_iter(match=f"{KEYS.instance}tq:*", count=1000):
            usage += int(admin.memory_usage(key, samples=0) or 0)
        buckets = sum(1 for _ in admin.scan_iter(match=f"{KEYS.sched_jobs_prefix}*", count=1000))
        encoding = admin.object("encoding", next(admin.scan_iter(match=f"{KEYS.sched_jobs_prefix}*")))
    print(
        f"  {n:,} jobs of {function!r}, {len(ids(1, dashed=dashed)[0])}-char ids, "
        f"{buckets:,} buckets ({encoding.decode()}): "
        f"INFO used_memory delta {(after - before) / n:.0f} B/job, "
        f"MEMORY USAGE sum {usage / n:.0f} B/job"
    )


def claim_latency(
    server: RedisServer, n: int, *, backlog: bool, calls: int = 400
) -> tuple[float, float, float]:
    """Median and p95 client-side us per claim_due(limit=10), and Redis-side script us per call."""
    with server.client() as admin:
        admin.flushall()
        store = RedisJobStore(admin, KEYS)
        started = time.perf_counter()
        before = int(admin.info("memory")["used_memory"])
        total = n
        if backlog:
            load(store, n, due_ms=None, batch=5000)
        else:
            load(store, n, due_ms=store.now_ms() + HOUR_MS, batch=5000)
            load(store, calls * 10 + 10, due_ms=None, batch=5000)  # + the warm-up claim
            total += calls * 10 + 10
        loaded_s = time.perf_counter() - started
        per_job = (int(admin.info("memory")["used_memory"]) - before) / total
        store.claim_due("warm", [LIMITS], 10)
        admin.config_resetstat()
        samples: list[float] = []
        claimed = 0
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            batch = store.claim_due("bench-node", [LIMITS], 10)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            claimed += len(batch.claims)
        stats = admin.info("commandstats")
        redis_us = int(stats["cmdstat_evalsha"]["usec"]) / calls
    assert claimed == calls * 10, f"claimed {claimed}, expected {calls * 10}"
    print(
        f"  (loaded {total:,} jobs in {loaded_s:.1f} s, INFO used_memory delta {per_job:.0f} B/job)",
        flush=True,
    )
    return statistics.median(samples), percentile(samples, 95), redis_us


def round_trips(
    server: RedisServer,
    jobs: int,
    add_batch: int,
    claim_batch: int,
    finish_batch: int,
    *,
    start_in_claim: bool,
) -> float:
    with counting_client(server) as (client, counter):
        client.flushall()
        store = RedisJobStore(client, KEYS)
        store.add_jobs([NewJob(id="warm-up", function=FUNCTION)])  # scripts loaded on this server
        warm = store.claim_due("n1", [LIMITS], 1).claims
        store.start([(c.job.id, c.fence) for c in warm])
        store.finish([Outcome(job_id=c.job.id, fence=c.fence, kind=OutcomeKind.DONE) for c in warm])
        before = counter.count
        load(store, jobs, due_ms=None, batch=add_batch)
        limits = FunctionLimits(name=FUNCTION, free_slots=claim_batch)
        pending: list[Outcome] = []
        done = 0
        while done < jobs:
            claims = store.claim_due("n1", [limits], claim_batch, start=start_in_claim).claims
            if not start_in_claim:
                store.start([(c.job.id, c.fence) for c in claims])
            pending += [Outcome(job_id=c.job.id, fence=c.fence, kind=OutcomeKind.DONE) for c in claims]
            done += len(claims)
            while len(pending) >= finish_batch or (pending and done >= jobs):
                store.finish(pending[:finish_batch])
                pending = pending[finish_batch:]
        return (counter.count - before) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k against 100k pending jobs instead of 1M")
    options = parser.parse_args()
    large = 100_000 if options.quick else 1_000_000
    with RedisServer() as server:
        with server.client() as admin:
            print(describe_machine(admin))
        print("memory per pending job without a request (target <= 300 B):")
        memory_per_job(server, 100_000, FUNCTION, dashed=False)
        memory_per_job(server, 100_000, "GenerateMonthlyReport", dashed=True)

        print("claim_due(limit=10) latency, client median / p95 us, Redis-side script us per call:")
        for backlog in (False, True):
            label = "all due now (backlog)" if backlog else "due in 1 h, 10 due now per claim"
            rows = {}
            for n in (1_000, large):
                calls = 400 if not backlog else min(400, n // 10 - 1)
                rows[n] = claim_latency(server, n, backlog=backlog, calls=calls)
                median, p95, redis_us = rows[n]
                print(f"  {label}, {n:>9,} pending: {median:7.0f} / {p95:7.0f} us, Redis {redis_us:5.0f} us")
            growth = rows[large][0] / rows[1_000][0]
            redis_growth = rows[large][2] / rows[1_000][2]
            print(
                f"  growth {large:,} / 1,000: client {growth:.2f}x, "
                f"Redis-side {redis_growth:.2f}x (target <= 2x)"
            )

        print("round trips per job, amortised (add -> claim -> start -> finish, 1,000 jobs; target <= 3):")
        for add, claim, finish, start_in_claim in (
            (1, 1, 1, False),
            (1, 1, 1, True),
            (100, 8, 1, False),
            (100, 8, 1, True),
            (100, 8, 8, True),
            (1000, 100, 100, True),
        ):
            per_job = round_trips(server, 1000, add, claim, finish, start_in_claim=start_in_claim)
            how = "claim_due(start=True)" if start_in_claim else "claim_due + start   "
            print(f"  add batch {add:>4}, {how} batch {claim:>3}, finish batch {finish:>3}: {per_job:.2f}")


if __name__ == "__main__":
    main()
