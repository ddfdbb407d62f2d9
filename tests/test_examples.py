"""The examples run: the quickstart script, and the WSGI app served in-process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from wsgiref.util import setup_testing_defaults

import orjson
import pytest

from tickerq.testing import RedisServer

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get(app: object, path: str) -> tuple[str, object]:
    environ: dict[str, object] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers: status.append(s)))  # type: ignore[operator]
    return status[0], orjson.loads(body)


def test_wsgi_app_serves_health_and_cached_list(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WSGI example starts a node per process and serves /health and /popular."""
    monkeypatch.setenv("TICKERQ_REDIS", redis_server.address)
    module = load("wsgi_app")
    module.start_node()
    try:
        status, health = get(module.app, "/health")
        assert "200 OK" == status
        assert {
            "node": module._container.redis_context().node_id,
            "total_nodes": 1,
            "healthy_nodes": 1,
            "dead": [],
        } == health
        assert ("200 OK", ["espresso", "flat white", "cortado"]) == get(module.app, "/popular")
    finally:
        module.stop_node()


@pytest.mark.slow
def test_quickstart_runs(redis_server: RedisServer) -> None:
    """examples/quickstart.py runs to the end and sees the crashed node detected."""
    env = {**os.environ, "TICKERQ_REDIS": redis_server.address}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "found dead: ['web-03']" in result.stdout
    assert "registered nodes now: ['web-01', 'web-02']" in result.stdout
