"""Three tickerq nodes share one Redis; one of them dies and the others notice.

Run it with ``python examples/quickstart.py``. It uses the Redis named by the
TICKERQ_REDIS environment variable (a connection string such as
"localhost:6379"), or starts a throw-away redis-server when none is given.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from tickerq import NodesDead, TickerQContainer, TickerQOptions, add_tickerq
from tickerq.testing import RedisServer


def start_node(name: str, configuration: str) -> TickerQContainer:
    """Build and start one node, the way a web worker would at startup."""

    def configure(options: TickerQOptions) -> None:
        options.configure_scheduler(node_identifier=name)
        options.add_redis(
            configuration=configuration,
            instance_name="quickstart:",
            node_heartbeat_interval=timedelta(seconds=1),  # fast, for the demo
            node_heartbeat_grace=timedelta(seconds=1),
        )

    container = add_tickerq(configure)
    container.events().subscribe(
        NodesDead, lambda event: print(f"  [{event.detected_by}] found dead: {list(event.nodes)}")
    )
    container.init_resources()  # connects, writes the first heartbeat, starts the thread
    return container


def main() -> None:
    configuration = os.environ.get("TICKERQ_REDIS")
    server = None
    if not configuration:
        server = RedisServer().start()
        configuration = server.address
        print(f"started a throw-away redis-server on {configuration}")
    try:
        run(configuration)
    finally:
        if server is not None:
            server.close()  # stops it and removes its directory, also after an error


def run(configuration: str) -> None:
    nodes = {name: start_node(name, configuration) for name in ("web-01", "web-02", "web-03")}
    ctx = nodes["web-01"].redis_context()
    print("registered nodes:", ctx.get_registered_nodes())

    popular = ctx.get_or_set_array("popular-items", lambda: ["espresso", "flat white"], timedelta(minutes=5))
    print("cached list:", popular)
    with ctx.lock("nightly-report", ttl=timedelta(seconds=10)) as lease:
        print(f"holding lock nightly-report with fence {lease.fence}")

    print("web-03 crashes (its heartbeat stops; nothing is cleaned up)...")
    nodes["web-03"].heartbeat().stop()
    deadline = time.monotonic() + 10
    while "web-03" in ctx.get_registered_nodes() and time.monotonic() < deadline:
        health = ctx.get_node_health()
        print(f"  total={health.total_nodes} healthy={health.healthy_nodes} dead={list(health.dead)}")
        time.sleep(0.5)
    print("registered nodes now:", ctx.get_registered_nodes())

    for container in nodes.values():
        container.shutdown_resources()


if __name__ == "__main__":
    main()
