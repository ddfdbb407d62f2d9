"""Every connection-string form against real servers: password, db, unix, IPv6, Sentinel, replicas."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from tickerq._redis.connection import RedisConnections, open_connections
from tickerq.errors import ConnectionFailedError
from tickerq.options import RedisOptions
from tickerq.testing import RedisServer, free_port

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A password-protected server, reachable over 127.0.0.1, ::1 and a unix socket."""
    sock = tmp_path_factory.mktemp("sock") / "redis.sock"
    extra = ("--bind", "127.0.0.1", "::1", "--unixsocket", str(sock), "--unixsocketperm", "700")
    with RedisServer(password=PASSWORD, extra_args=extra) as server:
        server.unix_socket = str(sock)  # type: ignore[attr-defined]
        yield server


def connect(configuration: str, **fields: object) -> RedisConnections:
    options = RedisOptions(configuration=configuration, **fields)  # type: ignore[arg-type]
    return open_connections(options.frozen_copy())


def database_of(connections: RedisConnections) -> int:
    return int(connections.client.client_info()["db"])


@pytest.mark.parametrize(
    ("template", "database"),
    [
        ("127.0.0.1:{port},password={password}", 0),
        ("127.0.0.1:{port},PASSWORD={password},connectTimeout=2000,syncTimeout=2000,connectRetry=1", 0),
        ("server=127.0.0.1:{port};password={password};ssl=false", 0),
        ("[::1]:{port},password={password},defaultDatabase=3", 3),
        ("redis://:{password}@127.0.0.1:{port}/3", 3),
        ("redis://default:{password}@[::1]:{port}/0", 0),
        ("unix://{unix}?password={password}&db=3", 3),
        (
            "127.0.0.1:{port},user=default,password={password},name=tickerq-test,keepAlive=30,abortConnect=true",
            0,
        ),
    ],
)
def test_connection_string_forms_reach_the_server(secured: RedisServer, template: str, database: int) -> None:
    """Each supported form connects, authenticates and selects the database it names."""
    text = template.format(port=secured.port, password=PASSWORD, unix=secured.unix_socket)  # type: ignore[attr-defined]
    with connect(text) as connections:
        assert connections.client.ping()
        assert database == database_of(connections)
        assert connections.fail_fast.ping()
        assert connections.watchdog.ping()
        assert PASSWORD not in repr(connections)
        assert PASSWORD not in connections.description


def test_client_name_is_set(secured: RedisServer) -> None:
    """name= sets the connection's CLIENT SETNAME."""
    with connect(f"127.0.0.1:{secured.port},password={PASSWORD},name=web-01") as connections:
        assert (
            b"web-01" == connections.client.client_getname()
            or "web-01" == connections.client.client_getname()
        )


def test_wrong_password_names_endpoint_not_password(secured: RedisServer) -> None:
    """A wrong password fails init with ConnectionFailedError naming the endpoint and never the password."""
    connections = connect(f"127.0.0.1:{secured.port},password=wrong-Secret-1")
    with pytest.raises(ConnectionFailedError) as caught:
        connections.__enter__()
    message = str(caught.value)
    assert f"127.0.0.1:{secured.port}" in message
    assert "wrong-Secret-1" not in message
    assert "authentication failed: wrong user name or password" in message


def test_unreachable_server_fails_fast_with_abort(secured: RedisServer) -> None:
    """Nothing listening: init raises within a bounded time and names the endpoint."""
    port = free_port()  # nothing listening
    connections = connect(f"127.0.0.1:{port},connectRetry=1,connectTimeout=500")
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match=f"127.0.0.1:{port}"):
        connections.__enter__()
    assert time.monotonic() - started < 3


def test_unreachable_server_without_abort_starts(caplog: pytest.LogCaptureFixture) -> None:
    """abort_on_connect_fail=False (or abortConnect=false): init logs and returns."""
    caplog.set_level(logging.WARNING)
    port = free_port()
    with connect(f"127.0.0.1:{port},abortConnect=false,connectRetry=0") as connections:
        assert not connections.closed
    assert "not reachable yet" in caplog.text


def test_several_endpoints_use_the_master(secured: RedisServer) -> None:
    """With several endpoints and no serviceName, the one reporting itself master is used."""
    replica_args = ("--replicaof", "127.0.0.1", str(secured.port))
    with RedisServer(password=PASSWORD, extra_args=replica_args) as replica:
        text = f"127.0.0.1:{replica.port},127.0.0.1:{secured.port},password={PASSWORD}"
        with connect(text) as connections:
            assert secured.port == connections.client.connection_pool.connection_kwargs["port"]
            connections.client.set("written-to", "master")


@pytest.mark.slow
def test_sentinel_service_name_reaches_the_master(secured: RedisServer) -> None:
    """serviceName= asks the Sentinels for the master and connects to it."""
    with RedisServer(sentinel_for=(secured.host, secured.port), password=PASSWORD) as sentinel:
        text = f"127.0.0.1:{sentinel.port},serviceName=mymaster,password={PASSWORD}"
        with connect(text) as connections:
            assert connections.client.ping()
            assert secured.port == int(connections.client.info("server")["tcp_port"])
            assert PASSWORD not in connections.description


def test_given_client_is_used_and_never_closed(secured: RedisServer) -> None:
    """A client passed in is the application client; closing the connections leaves it usable."""
    client = secured.client()
    options = RedisOptions(client=client)
    connections = open_connections(options.frozen_copy())
    with connections:
        assert connections.client is client
        assert connections.fail_fast.ping()
    assert client.ping()
    client.close()
