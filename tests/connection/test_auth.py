"""A missing or wrong password is reported as such: AuthenticationFailedError, with no raw server text."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

import tickerq
from tickerq import (
    AuthenticationFailedError,
    ConnectionFailedError,
    RedisUnavailableError,
    TickerQContainer,
    add_tickerq,
)
from tickerq.testing import RedisServer

PASSWORD = "Right-Pa55word"
WRONG = "Wrong-Pa55word"
REQUIRED = "the server requires a password and none was given"
FAILED = "authentication failed: wrong user name or password"
# What the messages must not say: redis-py's and the server's words, and the misleading hint.
RAW = ("HELLO", "NOAUTH", "WRONGPASS", "username-password pair", "Authentication required", "abort_on")


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    """A redis-server that requires PASSWORD."""
    with RedisServer(password=PASSWORD) as server:
        yield server


def credentials(case: str) -> str:
    return {
        "no password": "",
        "wrong password": f",password={WRONG}",
        "wrong user": f",user=nobody,password={PASSWORD}",
    }[case]


CASES = [("no password", REQUIRED), ("wrong password", FAILED), ("wrong user", FAILED)]


def container_for(server: RedisServer, case: str, **fields: object) -> TickerQContainer:
    configuration = f"{server.address}{credentials(case)}"
    return add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="web-01"),
            o.add_redis(configuration=configuration, connect_retry=0, **fields),
        )
    )


def assert_says_only(expected: str, error: BaseException) -> None:
    message = str(error)
    assert expected in message
    for text in (*RAW, WRONG, PASSWORD):
        assert text not in message
    assert isinstance(error, ConnectionFailedError)
    assert isinstance(error, RedisUnavailableError)
    assert isinstance(error, tickerq.TickerQError)


@pytest.mark.parametrize(("case", "expected"), CASES)
def test_init_resources_reports_the_authentication_failure(
    secured: RedisServer, case: str, expected: str
) -> None:
    """init_resources() raises AuthenticationFailedError saying what is wrong with the credentials."""
    container = container_for(secured, case)
    try:
        with pytest.raises(AuthenticationFailedError) as caught:
            container.init_resources()
    finally:
        container.shutdown_resources()
    assert_says_only(expected, caught.value)
    assert secured.address in str(caught.value)
    assert (expected == REQUIRED) is caught.value.password_required


@pytest.mark.parametrize(("case", "expected"), CASES)
def test_context_call_without_init_reports_the_authentication_failure(
    secured: RedisServer, case: str, expected: str
) -> None:
    """Without init, resolving the context, and (abort off) each call, raise AuthenticationFailedError."""
    container = container_for(secured, case)
    try:
        with pytest.raises(AuthenticationFailedError) as caught:
            container.redis_context()  # connects: abort_on_connect_fail is on
        assert_says_only(expected, caught.value)
    finally:
        container.shutdown_resources()
    container = container_for(secured, case, abort_on_connect_fail=False)
    ctx = container.redis_context()
    try:
        for call in (ctx.get_registered_nodes, ctx.get_dead_nodes, ctx.notify_node_alive):
            with pytest.raises(AuthenticationFailedError) as caught:
                call()
            assert_says_only(expected, caught.value)
    finally:
        container.shutdown_resources()


def test_resp3_client_without_password_reports_a_required_password(secured: RedisServer) -> None:
    """A RESP3 client (whose server reply is 'HELLO must be called...') gets the same plain error."""
    client = redis.Redis(host=secured.host, port=secured.port, protocol=3)
    container = add_tickerq(lambda o: o.add_redis(client=client, connect_retry=0))
    try:
        with pytest.raises(AuthenticationFailedError) as caught:
            container.init_resources()
        assert_says_only(REQUIRED, caught.value)
        with pytest.raises(AuthenticationFailedError) as caught:
            container.redis_context().get_registered_nodes()
        assert_says_only(REQUIRED, caught.value)
    finally:
        container.shutdown_resources()
        client.close()


def test_without_abort_the_warning_says_authentication_failed(
    secured: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """abort_on_connect_fail=False: init starts the node and logs that authentication failed, nothing raw."""
    caplog.set_level(logging.WARNING)
    container = container_for(secured, "wrong password", abort_on_connect_fail=False)
    container.init_resources()
    container.shutdown_resources()
    warnings = [r.getMessage() for r in caplog.records if r.name == "tickerq._redis.connection"]
    assert 1 == len(warnings)
    assert FAILED in warnings[0]
    for text in (*RAW, WRONG):
        assert text not in warnings[0]


def test_right_password_connects(secured: RedisServer) -> None:
    """The right password still connects and registers the node."""
    container = add_tickerq(
        lambda o: (
            o.configure_scheduler(node_identifier="web-01"),
            o.add_redis(configuration=f"{secured.address},password={PASSWORD}"),
        )
    )
    container.init_resources()
    try:
        assert "web-01" in container.redis_context().get_registered_nodes()
    finally:
        container.shutdown_resources()
