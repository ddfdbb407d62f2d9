"""The README's Python examples run as written (against the suite's redis-server)."""

from __future__ import annotations

import re
from pathlib import Path

from dependency_injector.containers import DynamicContainer

from tickerq import add_tickerq
from tickerq.testing import RedisServer

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.DOTALL)
    return [block for block in blocks if "myapp" not in block]  # deployment snippets need an app


def test_readme_examples_run(redis_server: RedisServer) -> None:
    """Every runnable README example executes in order without error, on a Redis other nodes share."""
    namespace: dict[str, object] = {}
    containers: list[DynamicContainer] = []
    neighbour = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="web-07"),
            o.add_redis(configuration=redis_server.address),
        )
    )
    neighbour.redis_context().notify_node_alive()  # already registered before the README's node
    neighbour.shutdown_resources()
    try:
        for block in python_blocks():
            exec(block.replace("localhost:6379", redis_server.address), namespace)
            found = [v for v in namespace.values() if isinstance(v, DynamicContainer)]
            containers += [container for container in found if container not in containers]
    finally:
        for container in containers:  # a later block may rebind ``container``: stop them all
            container.shutdown_resources()
    assert len(python_blocks()) >= 5
