"""A tickerq node in a process of its own, for multi-process tests.

Usage: python tests/node_process.py CONFIGURATION NODE_ID INTERVAL GRACE [START_AT]

Starts the node (at wall-clock time START_AT, if given, so several processes
register together), prints "ready", and runs until stdin closes or it is killed.
"""

from __future__ import annotations

import sys
import time

from tickerq import add_tickerq


def main() -> None:
    configuration, node, interval, grace = sys.argv[1:5]
    start_at = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0

    def configure(options):  # type: ignore[no-untyped-def]
        options.configure_scheduler(node_identifier=node)
        options.add_redis(
            configuration=configuration,
            node_heartbeat_interval=float(interval),
            node_heartbeat_grace=float(grace),
        )

    container = add_tickerq(configure)
    time.sleep(max(0.0, start_at - time.time()))
    container.init_resources()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    container.shutdown_resources()


if __name__ == "__main__":
    main()
