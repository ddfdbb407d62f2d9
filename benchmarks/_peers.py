"""Peer job queues measured on the same Redis in the same run: RQ and Huey.

Both get the bar the scheduler issue sets: ``n`` no-op jobs enqueued up front,
then drained by one worker in this process — RQ's ``SimpleWorker`` (no fork
per job) in burst mode, and Huey's consumer with one thread worker. The time
counted is the drain only, from the worker's start to the last job done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import _peer_tasks
import redis
from _peer_tasks import noop


def _quiet_worker_class() -> type:
    from rq import SimpleWorker

    class QuietWorker(SimpleWorker):  # type: ignore[misc]
        """RQ's SimpleWorker without its control channel.

        The pub/sub channel only carries "kill the running job" commands; in burst
        mode its teardown waits for the listener thread for up to a minute, which
        would be charged to nobody's throughput but the wall clock's.
        """

        def subscribe(self) -> None:
            self.pubsub_thread = None

        def unsubscribe(self) -> None:
            pass

    return QuietWorker


def rq_jobs_per_second(client: redis.Redis, n: int, on_drain: Callable[[], object] | None = None) -> float:
    """Enqueue ``n`` no-op jobs with RQ, drain them with one ``SimpleWorker``; jobs/s.

    ``on_drain`` is called when the jobs are enqueued, just before the drain starts
    (e.g. to read a round-trip counter).
    """
    from rq import Queue

    client.flushdb()
    queue = Queue("bench", connection=client)
    with client.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data(noop, result_ttl=0) for _ in range(n)], pipeline=pipe)
        pipe.execute()
    worker = _quiet_worker_class()([queue], connection=client)
    if on_drain is not None:
        on_drain()
    before = _peer_tasks.calls
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    done = _peer_tasks.calls - before
    if done != n:
        raise RuntimeError(f"RQ ran {done} of {n} jobs")
    return n / (_peer_tasks.last_call - started)


def huey_tasks_per_second(client: redis.Redis, n: int, on_drain: Callable[[], object] | None = None) -> float:
    """Enqueue ``n`` no-op tasks with Huey, drain them with a one-thread consumer; tasks/s.

    ``on_drain``: as for :func:`rq_jobs_per_second`.
    """
    from huey import RedisHuey
    from huey.signals import SIGNAL_COMPLETE

    client.flushdb()
    huey = RedisHuey("bench", connection_pool=client.connection_pool, results=False)
    task = huey.task()(noop)
    done = threading.Event()
    count = 0

    @huey.signal(SIGNAL_COMPLETE)
    def completed(signal: str, task: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    for _ in range(n):
        task()
    consumer = huey.create_consumer(
        workers=1, worker_type="thread", periodic=False, check_worker_health=False
    )
    if on_drain is not None:
        on_drain()
    started = time.perf_counter()
    consumer.start()
    finished = done.wait(600)
    elapsed = time.perf_counter() - started
    consumer.stop(graceful=True)
    if not finished:
        raise RuntimeError(f"Huey ran {count} of {n} tasks")
    client.flushdb()
    return n / elapsed
