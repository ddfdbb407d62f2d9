"""A WSGI app whose every worker process is a tickerq node.

Works under any WSGI server. With gunicorn, use ``examples/gunicorn.conf.py``::

    TICKERQ_REDIS=localhost:6379 gunicorn -c examples/gunicorn.conf.py examples.wsgi_app:app

or try it alone with the standard library's server::

    TICKERQ_REDIS=localhost:6379 python examples/wsgi_app.py

``GET /health`` shows the cluster's nodes, ``GET /popular`` a list cached for the
whole cluster (computed once per five minutes, whichever worker asks first).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import orjson

from tickerq import TickerQContainer, TickerQOptions, add_tickerq

_container: TickerQContainer | None = None


def start_node() -> TickerQContainer:
    """Build and start this process's node. Call it in each worker, after the fork."""
    global _container  # noqa: PLW0603 - one node per process, by design

    def configure(options: TickerQOptions) -> None:
        # One node per worker process: the pid tells the workers of one host apart.
        options.configure_scheduler(node_identifier=f"{socket.gethostname()}-{os.getpid()}")
        options.add_redis(
            configuration=os.environ.get("TICKERQ_REDIS", "localhost:6379"),
            node_heartbeat_interval=timedelta(seconds=10),
        )

    _container = add_tickerq(configure)
    _container.init_resources()
    return _container


def stop_node() -> None:
    """Stop this process's node (gunicorn's worker_exit)."""
    if _container is not None:
        _container.shutdown_resources()


def _popular_items() -> list[str]:
    return ["espresso", "flat white", "cortado"]  # stands in for a slow database query


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """The WSGI application."""
    if _container is None:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"tickerq node not started: call start_node() after the fork\n"]
    ctx = _container.redis_context()
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        health = ctx.get_node_health()
        body: object = {
            "node": ctx.node_id,
            "total_nodes": health.total_nodes,
            "healthy_nodes": health.healthy_nodes,
            "dead": list(health.dead),
        }
    elif path == "/popular":
        body = ctx.get_or_set_array("popular-items", _popular_items, timedelta(minutes=5))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    start_node()
    try:
        with make_server("127.0.0.1", 8000, app) as server:
            print("serving on http://127.0.0.1:8000/health")
            server.serve_forever()
    finally:
        stop_node()
