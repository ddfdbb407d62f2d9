"""No-op task functions for the peer queues (they import jobs by module path)."""

from __future__ import annotations

import time

#: How many times :func:`noop` ran in this process (the workers run in-process), and when last.
calls = 0
last_call = 0.0


def noop() -> None:
    """Counts itself and does nothing else: the benchmarks measure the queue, not the work."""
    global calls, last_call  # noqa: PLW0603 - a benchmark's own counter
    calls += 1
    last_call = time.perf_counter()
