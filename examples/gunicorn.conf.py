"""gunicorn settings for examples/wsgi_app.py: one tickerq node per worker, started after the fork.

Safe with ``--preload``: the app module builds nothing at import; each worker
starts its own node in ``post_fork`` and stops it in ``worker_exit``.
"""

from __future__ import annotations

from typing import Any

workers = 2


def post_fork(server: Any, worker: Any) -> None:
    from examples.wsgi_app import start_node  # noqa: PLC0415

    start_node()


def worker_exit(server: Any, worker: Any) -> None:
    from examples.wsgi_app import stop_node  # noqa: PLC0415

    stop_node()
