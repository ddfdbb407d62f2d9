"""Unit and property tests for the pure ``configuration`` string parser."""

from __future__ import annotations

import re
import string
from datetime import timedelta
from urllib.parse import quote

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tickerq._redis.connection_string import (
    ConnectionSettings,
    Endpoint,
    mask_configuration,
    parse_configuration,
)
from tickerq.errors import ConfigurationError, TickerQError

SECRET = "hunter2secret"


def ep(host: str, port: int = 6379) -> Endpoint:
    """Shorthand for a TCP endpoint."""
    return Endpoint(host=host, port=port)


def settings(*endpoints: Endpoint, **fields: object) -> ConnectionSettings:
    """Shorthand for expected settings."""
    return ConnectionSettings(endpoints=endpoints, **fields)  # type: ignore[arg-type]


def error_for(text: str) -> str:
    """The message of the ConfigurationError that parsing ``text`` raises."""
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(text)
    return str(info.value)


def messages(exc: BaseException) -> str:
    """The messages a traceback of ``exc`` prints: its own and those of its cause or context."""
    shown = []
    current: BaseException | None = exc
    while current is not None:
        shown.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n".join(shown)


def shown_by_error(text: str) -> str:
    """The messages shown for the ConfigurationError that parsing ``text`` raises."""
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(text)
    return messages(info.value)


# --- StackExchange.Redis option strings -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:6379", settings(ep("localhost"))),
        ("localhost", settings(ep("localhost"))),
        ("localhost:6380", settings(ep("localhost", 6380))),
        ("localhost:6379,password=x", settings(ep("localhost"), password="x")),
        (
            "server=localhost:6379;password=secret;ssl=true",
            settings(ep("localhost"), password="secret", ssl=True),
        ),
        ("host=h1:7000;endpoint=h2", settings(ep("h1", 7000), ep("h2"))),
        ("h1:7000,h2:7001,h3", settings(ep("h1", 7000), ep("h2", 7001), ep("h3"))),
        ("[::1]:6379", settings(ep("::1"))),
        ("[::1]", settings(ep("::1"))),
        ("[2001:db8::5]:7000,10.0.0.1:7001", settings(ep("2001:db8::5", 7000), ep("10.0.0.1", 7001))),
        ("redis-1.example.com", settings(ep("redis-1.example.com"))),
    ],
)
def test_option_string_forms(text: str, expected: ConnectionSettings) -> None:
    """Every StackExchange.Redis endpoint form parses to the expected settings."""
    assert expected == parse_configuration(text)


def test_sentinel_endpoints_and_service_name() -> None:
    """serviceName selects Sentinel mode and the endpoints are the sentinels."""
    expected = settings(ep("sentinel1", 26379), ep("sentinel2", 26379), service_name="mymaster")
    assert expected == parse_configuration("sentinel1:26379,sentinel2:26379,serviceName=mymaster")


def test_sentinel_default_port_is_26379() -> None:
    """A sentinel given without a port gets 26379; an explicit port is kept."""
    parsed = parse_configuration("serviceName=m,s1,s2:5000,[::1]")
    assert (ep("s1", 26379), ep("s2", 5000), ep("::1", 26379)) == parsed.endpoints


@pytest.mark.parametrize(
    ("option", "field", "expected"),
    [
        ("user=alice", "username", "alice"),
        ("password=p@ss=word:1", "password", "p@ss=word:1"),
        ("ssl=true", "ssl", True),
        ("ssl=false", "ssl", False),
        ("abortConnect=false", "abort_connect", False),
        ("abortConnect=true", "abort_connect", True),
        ("connectRetry=3", "connect_retry", 3),
        ("connectRetry=0", "connect_retry", 0),
        ("connectTimeout=5000", "connect_timeout", timedelta(seconds=5)),
        ("syncTimeout=250", "sync_timeout", timedelta(milliseconds=250)),
        ("defaultDatabase=7", "database", 7),
        ("name=web-01", "client_name", "web-01"),
        ("serviceName=mymaster", "service_name", "mymaster"),
        ("keepAlive=60", "keepalive", timedelta(seconds=60)),
        ("keepAlive=0", "keepalive", timedelta(0)),
    ],
)
def test_each_option(option: str, field: str, expected: object) -> None:
    """Each supported option sets its field, with ms/seconds converted to timedelta."""
    assert expected == getattr(parse_configuration(f"h:1,{option}"), field)


def test_options_not_given_are_none() -> None:
    """Options absent from the string keep their defaults (None = not given)."""
    parsed = parse_configuration("h")
    unset = (None, None, None, None, None)
    assert unset == (
        parsed.abort_connect,
        parsed.connect_retry,
        parsed.connect_timeout,
        parsed.sync_timeout,
        parsed.keepalive,
    )
    defaults = (False, 0, None, None, None, None)
    assert defaults == (
        parsed.ssl,
        parsed.database,
        parsed.username,
        parsed.password,
        parsed.client_name,
        parsed.service_name,
    )


def test_option_keys_and_booleans_are_case_insensitive() -> None:
    """Keys and true/false are matched without regard to case."""
    parsed = parse_configuration(
        "SERVER=h;PassWord=x;SSL=TRUE;abortconnect=False;CONNECTTIMEOUT=10;SyncTimeout=20;"
        "DEFAULTDATABASE=2;NAME=n;servicename=s;KEEPALIVE=5;USER=u;ConnectRetry=1"
    )
    expected = settings(
        ep("h", 26379),
        password="x",
        ssl=True,
        abort_connect=False,
        connect_timeout=timedelta(milliseconds=10),
        sync_timeout=timedelta(milliseconds=20),
        database=2,
        client_name="n",
        service_name="s",
        keepalive=timedelta(seconds=5),
        username="u",
        connect_retry=1,
    )
    assert expected == parsed


def test_whitespace_empty_tokens_and_mixed_separators() -> None:
    """Whitespace around tokens and '=' is ignored, as are empty tokens."""
    assert settings(ep("a"), ep("b", 2), password="x") == parse_configuration(" a , ;b:2;, password = x ,")


def test_later_option_wins_and_duplicate_endpoints_collapse() -> None:
    """A repeated option takes its last value; a repeated endpoint is listed once."""
    assert settings(ep("a"), ep("b"), database=3) == parse_configuration(
        "a,b,a:6379,defaultDatabase=1,defaultDatabase=3"
    )


def test_empty_password_means_none() -> None:
    """``password=`` with no value is the same as no password."""
    assert None is parse_configuration("h,password=").password


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://localhost", settings(ep("localhost"))),
        ("redis://localhost:6380/2", settings(ep("localhost", 6380), database=2)),
        ("redis://localhost/", settings(ep("localhost"))),
        ("redis://:pw@h", settings(ep("h"), password="pw")),
        ("redis://alice@h", settings(ep("h"), username="alice")),
        ("redis://alice:pw@h:1/3", settings(ep("h", 1), username="alice", password="pw", database=3)),
        ("redis://a%40b:p%3Aw%2F%40@h", settings(ep("h"), username="a@b", password="p:w/@")),
        ("redis://u:p@ss@h", settings(ep("h"), username="u", password="p@ss")),
        ("rediss://h:6380", settings(ep("h", 6380), ssl=True)),
        ("rediss://h?ssl=true", settings(ep("h"), ssl=True)),
        ("redis://[::1]:7000/1", settings(ep("::1", 7000), database=1)),
        ("redis://[::1]", settings(ep("::1"))),
        ("redis://h?db=4", settings(ep("h"), database=4)),
        ("redis://h/1?db=4", settings(ep("h"), database=4)),
        ("redis://h?password=a+b%26c", settings(ep("h"), password="a b&c")),
        ("redis://u:url@h?password=query&user=q", settings(ep("h"), username="u", password="url")),
        ("redis://h?serviceName=m", settings(ep("h", 26379), service_name="m")),
        ("unix:///tmp/r.sock", settings(Endpoint(unix_path="/tmp/r.sock"))),
        (
            "unix:///tmp/r.sock?db=2&password=pw",
            settings(Endpoint(unix_path="/tmp/r.sock"), database=2, password="pw"),
        ),
        ("unix://:pw@/tmp/r%20x.sock", settings(Endpoint(unix_path="/tmp/r x.sock"), password="pw")),
    ],
)
def test_url_forms(text: str, expected: ConnectionSettings) -> None:
    """redis://, rediss:// and unix:// URLs parse to the expected settings."""
    assert expected == parse_configuration(text)


def test_url_query_options_are_case_insensitive_and_complete() -> None:
    """A URL query takes every option name, case-insensitively, and the scheme too."""
    parsed = parse_configuration(
        "REDIS://h?DB=1&SSL=true&AbortConnect=false&connectretry=2&CONNECTTIMEOUT=100&"
        "syncTimeout=200&keepAlive=3&Name=n&user=u&Password=p"
    )
    expected = settings(
        ep("h"),
        database=1,
        ssl=True,
        abort_connect=False,
        connect_retry=2,
        connect_timeout=timedelta(milliseconds=100),
        sync_timeout=timedelta(milliseconds=200),
        keepalive=timedelta(seconds=3),
        client_name="n",
        username="u",
        password="p",
    )
    assert expected == parsed


def test_url_default_database_option() -> None:
    """defaultDatabase is accepted in a URL query as an alias of db."""
    expected = settings(ep("h"), database=5)
    assert expected == parse_configuration("redis://h?defaultDatabase=5")


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (ep("localhost"), "localhost:6379"),
        (ep("::1"), "[::1]:6379"),
        (ep("10.1.2.3", 7000), "10.1.2.3:7000"),
        (Endpoint(unix_path="/tmp/r.sock"), "unix:///tmp/r.sock"),
    ],
)
def test_endpoint_str(endpoint: Endpoint, text: str) -> None:
    """An endpoint renders as host:port, [IPv6]:port or a unix:// URL."""
    assert text == str(endpoint)


@pytest.mark.parametrize(
    "fields",
    [{}, {"host": "h", "unix_path": "/s"}, {"host": ""}, {"unix_path": ""}, {"host": "h", "port": 0}],
)
def test_endpoint_rejects_invalid_values(fields: dict[str, object]) -> None:
    """An endpoint needs exactly one of host/unix_path, non-empty, and a valid port."""
    with pytest.raises(ConfigurationError):
        Endpoint(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"endpoints": ()}, "endpoints"),
        ({"database": -1}, "database"),
        ({"connect_retry": -1}, "connect_retry"),
        ({"connect_timeout": timedelta(0)}, "connect_timeout"),
        ({"sync_timeout": timedelta(seconds=-1)}, "sync_timeout"),
        ({"keepalive": timedelta(seconds=-1)}, "keepalive"),
    ],
)
def test_settings_validators(fields: dict[str, object], name: str) -> None:
    """ConnectionSettings built directly still rejects out-of-range values, naming the field."""
    arguments: dict[str, object] = {"endpoints": (ep("h"),), **fields}
    with pytest.raises(ConfigurationError, match=name):
        ConnectionSettings(**arguments)  # type: ignore[arg-type]


def test_settings_are_immutable() -> None:
    """Parsed settings are frozen."""
    parsed = parse_configuration("h")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        parsed.database = 1  # type: ignore[misc]


def test_repr_and_str_mask_the_password() -> None:
    """repr() and str() show *** instead of the password, and None when there is none."""
    parsed = parse_configuration(f"h,password={SECRET}")
    assert SECRET not in repr(parsed)
    assert SECRET not in str(parsed)
    assert "password='***'" in repr(parsed)
    assert "password=None" in repr(parse_configuration("h"))


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("127.0.0.1:6379,ssl=true", "127.0.0.1:6379 db=0 ssl"),
        ("h", "h:6379 db=0"),
        (
            f"redis://bob:{SECRET}@[::1]:7000/3?name=n",
            "[::1]:7000 db=3 user=bob password=*** name=n",
        ),
        ("s1,s2:5000,serviceName=m", "s1:26379,s2:5000 sentinel service=m db=0"),
        ("unix:///tmp/r.sock", "unix:///tmp/r.sock db=0"),
    ],
)
def test_describe(text: str, description: str) -> None:
    """describe() is a short safe summary: endpoints, sentinel, db, ssl, user, masked password."""
    assert description == parse_configuration(text).describe()


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["empty"]),
        ("   ", ["empty"]),
        (f"password={SECRET}", ["no endpoint", "password=***"]),
        (f"h:0,password={SECRET}", ["'h:0'", "'0'", "1 to 65535"]),
        (f"h:65536,password={SECRET}", ["'h:65536'", "'65536'", "1 to 65535"]),
        (f"h:abc,password={SECRET}", ["'h:abc'", "'abc'", "1 to 65535"]),
        (f"h:,password={SECRET}", ["'h:'", "1 to 65535"]),
        (f":6379,password={SECRET}", ["':6379'", "empty host"]),
        (f"server=,password={SECRET}", ["'server'", "empty host"]),
        (f"bad host,password={SECRET}", ["'bad host'", "host[:port]"]),
        (f"[::1,password={SECRET}", ["'[::1'", "unterminated '['"]),
        (f"[::1]x,password={SECRET}", ["'[::1]x'", "'x'", "[IPv6]:port"]),
        (f"[nope]:1,password={SECRET}", ["'nope'", "IPv6"]),
        (f"::1:6379,password={SECRET}", ["'::1:6379'", "[IPv6]:port"]),
        (f"h,password={SECRET},colour=red", ["'colour'", "unknown option", "serviceName"]),
        (f"h,password={SECRET},=x", ["empty name", "name=value"]),
        (f"h,password={SECRET},ssl=yes", ["ssl", "'yes'", "true or false"]),
        (f"h,password={SECRET},abortConnect=1", ["abortConnect", "'1'", "true or false"]),
        (f"h,password={SECRET},connectRetry=-1", ["connectRetry", "'-1'", "0 to"]),
        (f"h,password={SECRET},connectRetry=two", ["connectRetry", "'two'", "whole number"]),
        (f"h,password={SECRET},connectTimeout=-5", ["connectTimeout", "'-5'", "milliseconds"]),
        (f"h,password={SECRET},connectTimeout=0", ["connectTimeout", "'0'", "from 1"]),
        (f"h,password={SECRET},connectTimeout=1.5", ["connectTimeout", "'1.5'", "whole number"]),
        (f"h,password={SECRET},syncTimeout=-1", ["syncTimeout", "'-1'", "milliseconds"]),
        (f"h,password={SECRET},keepAlive=-1", ["keepAlive", "'-1'", "seconds"]),
        (f"h,password={SECRET},defaultDatabase=x", ["defaultDatabase", "'x'", "whole number"]),
        (f"h,password={SECRET},defaultDatabase=99999999999", ["defaultDatabase", "out of range"]),
        (f"h,password={SECRET},db=1", ["'db'", "unknown option"]),
        (f"http://u:{SECRET}@h", ["'http'", "redis://"]),
        (f"redis://u:{SECRET}@h:99999/0", ["'h:99999'", "'99999'", "1 to 65535"]),
        (f"redis://u:{SECRET}@/0", ["empty host"]),
        (f"redis://u:{SECRET}@a,b", ["'a,b'", "one endpoint"]),
        (f"redis://u:{SECRET}@h/x", ["db", "'x'", "whole number"]),
        (f"redis://u:{SECRET}@h?db=-1", ["db", "'-1'", "0 to"]),
        (f"redis://u:{SECRET}@h?socket_timeout=1", ["'socket_timeout'", "unknown option"]),
        (f"redis://u:{SECRET}@h?flag", ["'flag'", "name=value"]),
        (f"redis://u:{SECRET}@h#frag", ["fragment"]),
        (f"redis://u:{SECRET}@[::1", ["redis://u:***@[::1", "malformed"]),
        (f"rediss://u:{SECRET}@h?ssl=false", ["ssl", "'false'", "rediss://"]),
        (f"unix://u:{SECRET}@host/x.sock", ["'host'", "unix:///"]),
        (f"unix://:{SECRET}@", ["unix:///"]),
        (f"unix:///x.sock?password={SECRET}&serviceName=m", ["unix:///x.sock", "serviceName"]),
        (f"unix:///x.sock?password={SECRET}&ssl=true", ["unix:///x.sock", "ssl"]),
    ],
)
def test_errors_name_the_problem_and_hide_the_password(text: str, fragments: list[str]) -> None:
    """Each malformed input raises ConfigurationError naming field/value/expectation, never the password."""
    message = error_for(text)
    for fragment in fragments:
        assert fragment in message
    assert SECRET not in message


def test_misspelt_password_option_is_not_echoed() -> None:
    """An unknown option's value is not shown, so a misspelt 'pasword=' cannot leak."""
    message = error_for(f"h,pasword={SECRET}")
    assert "'pasword'" in message
    assert SECRET not in message


# --- host names ---------------------------------------------------------------------------

LABEL_63 = "a" * 63
HUGE_HOST = "h" * 10_000


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("a..b:6379", "'a..b'"),
        ("a..b", "'a..b'"),
        (f"{'x' * 64}.example.com:6379", "'xxxxxxxx"),
        (f"server={'x' * 64}", "'xxxxxxxx"),
        (".".join([LABEL_63] * 4) + ":6379", "255 characters"),
        (f"{HUGE_HOST}:6379", "10000 characters"),
        ("redis://a..b:6379/0", "'a..b'"),
        (f"rediss://{'x' * 64}:6380", "'xxxxxxxx"),
        (f"redis://{HUGE_HOST}", "10000 characters"),
        ("ok-host:6379,a..b:6380", "'a..b'"),
    ],
)
def test_host_that_is_not_a_dns_name_is_rejected(text: str, host: str) -> None:
    """A host with an empty label, a label over 63 characters or over 253 in all is a ConfigurationError."""
    message = error_for(text)
    assert host in message
    assert "DNS name" in message
    assert "1 to 63" in message
    assert len(message) < 400  # a huge host is truncated, not echoed whole


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{LABEL_63}.example.com:6379", ep(f"{LABEL_63}.example.com")),
        (".".join([LABEL_63] * 3) + "." + "b" * 61, ep(".".join([LABEL_63] * 3) + "." + "b" * 61)),
        ("localhost.", ep("localhost.")),
        ("redis_1:6379", ep("redis_1")),
        ("10.0.0.1:7000", ep("10.0.0.1", 7000)),
        ("[::1]:7000", ep("::1", 7000)),
        ("[2001:db8::5]", ep("2001:db8::5")),
        (f"redis://{LABEL_63}.example.com/0", ep(f"{LABEL_63}.example.com")),
        ("redis://[::1]:7000", ep("::1", 7000)),
        ("unix:///run/a..b/redis.sock", Endpoint(unix_path="/run/a..b/redis.sock")),
    ],
)
def test_valid_hosts_addresses_and_sockets_still_parse(text: str, expected: Endpoint) -> None:
    """Labels up to 63 characters, 253 in all, a trailing dot, IPv4/IPv6 literals and unix sockets parse."""
    assert (expected,) == parse_configuration(text).endpoints


# --- passwords holding separators ------------------------------------------------------

TAIL = "SECRETTAIL"


@pytest.mark.parametrize(
    "text",
    [
        f"localhost:6379,password=abc,{TAIL}",
        f"localhost:6379;password=abc;{TAIL}",
        f"password=abc,{TAIL}",
        f"h,password=abc, {TAIL}:6379 ",
        f"h,password=abc,{TAIL} x",
        f"h,password=abc,[{TAIL}",
        f"h,password=,{TAIL}",
        f"h,password=abc,ssl=true,{TAIL}",
        f"serviceName=m,password=abc;{TAIL}",
    ],
)
def test_bare_token_after_password_is_rejected_unseen(text: str) -> None:
    """A bare token after password= may be the password's tail: rejected, and never echoed."""
    message = shown_by_error(text)
    assert TAIL not in message
    assert "password=" in message
    assert "before 'password='" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h1,h2:7000,password=a,ssl=true", settings(ep("h1"), ep("h2", 7000), password="a", ssl=True)),
        ("h1,password=a,server=h2", settings(ep("h1"), ep("h2"), password="a")),
        ("password=a;host=h1;endpoint=h2:1", settings(ep("h1"), ep("h2", 1), password="a")),
        ("h1,password=a,,; ,", settings(ep("h1"), password="a")),
        ("h1,user=u,password=a", settings(ep("h1"), username="u", password="a")),
    ],
)
def test_endpoints_before_password_or_keyed_still_parse(text: str, expected: ConnectionSettings) -> None:
    """Bare endpoints before password=, keyed endpoints anywhere and empty tokens are fine."""
    assert expected == parse_configuration(text)


def test_password_with_separators_fits_in_a_url() -> None:
    """The way to write a password holding ',' or ';' is a percent-encoded URL."""
    parsed = parse_configuration(f"redis://:abc%2C{TAIL}%3Bx@h:6379/0")
    assert f"abc,{TAIL};x" == parsed.password
    assert TAIL not in parsed.describe() + repr(parsed)


@pytest.mark.parametrize(
    "text",
    [
        f"h,password=abc,9{TAIL}=x",
        f"h,password=abc, {TAIL} X=x",
        f"h,password=abc,{TAIL}:x=1",
        f"h,password=abc;{TAIL}/x=1",
        f"redis://h?password=ab&9{TAIL}=x",
        f"redis://h?password=ab&{TAIL}/x=1",
    ],
)
def test_unknown_option_names_unlike_names_are_not_echoed(text: str) -> None:
    """An unknown option whose name does not look like one (maybe a password tail) is not named."""
    message = shown_by_error(text)
    assert "unknown option (name and value not shown)" in message
    assert TAIL not in message


@pytest.mark.parametrize(
    "text",
    [
        f"redis://h?password=ab&{TAIL}",
        f"redis://h?password=ab&{TAIL}&db=1",
        f"unix:///s.sock?db=1&password=ab&{TAIL}",
        f"redis://h?password=ab#{TAIL}",
    ],
)
def test_url_query_tail_after_password_is_not_echoed(text: str) -> None:
    """A query item without '=' after password= (an unencoded '&' in it) is not shown."""
    message = shown_by_error(text)
    assert TAIL not in message


def test_url_query_item_without_equals_is_named_otherwise() -> None:
    """Before any password=, an item without '=' is still named, if it looks like a name."""
    assert "'flag'" in error_for("redis://h?db=1&flag&password=x")
    assert "(not shown)" in error_for(f"redis://h?db=1&{TAIL}/x")


@pytest.mark.parametrize(
    "text",
    [
        f"redis:/u:{TAIL}@h",
        f"redis//:{TAIL}@h:6379",
        f"u:{TAIL}@h",
        f"server=u:{TAIL}@h",
        f"h,password=abc,server={TAIL}@h",
        f"[::1]@{TAIL}",
    ],
)
def test_endpoints_holding_an_at_sign_are_not_echoed(text: str) -> None:
    """A token with '@' is never a host and may be a mistyped URL with its password: not shown."""
    message = shown_by_error(text)
    assert "contains '@'" in message
    assert TAIL not in message


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:pa@ss/{TAIL}@host:6379/0",
        f"redis://u:abc/{TAIL}@h",
        f"redis://u:6380/{TAIL}@h/0",
        f"redis://u:abc?{TAIL}@h",
        f"redis://u:abc?x={TAIL}@h",
        f"redis://u:abc?{TAIL}=x@h",
        f"redis://u:abc#{TAIL}@h",
        f"redis://:{TAIL}/x@[::1]:0",
        f"rediss://u:abc/{TAIL}@h?ssl=false",
        f"redis:///u:{TAIL}@h",
        f"unix://u:abc/{TAIL}@/x.sock",
        f"unix://:abc?{TAIL}@/x.sock",
        f"redis://h:6379/0?password=p@{TAIL}&db=x",
        f"redis://h:6379/0?password=p@{TAIL}",
        f"redis://u:123?name=abc@{TAIL}",
        f"unix://:@/abc@/{TAIL}.sock",
        f"unix://:abc@/run/{TAIL}@1.sock",
        f"redis://u/abc:{TAIL}@h",
        f"redis://u?abc:{TAIL}@h",
    ],
)
def test_url_with_at_sign_after_host_shows_nothing_of_it(text: str) -> None:
    """An '@' after the host may mean a password cut by '/', '?' or '#': nothing of it is shown.

    With a ':' before the host (a password or a port) such a URL is refused even when it
    would parse; without one it parses, and only its errors are affected.
    """
    message = shown_by_error(text)
    assert "(not shown)" in message
    assert "%40" in message
    assert TAIL not in message
    assert "abc" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://h?name=a@b", settings(ep("h"), client_name="a@b")),
        ("redis://h/1?password=p@ss", settings(ep("h"), password="p@ss", database=1)),
        ("unix:///run/redis@1.sock", settings(Endpoint(unix_path="/run/redis@1.sock"))),
        ("redis://a@b:pw@h", settings(ep("h"), username="a@b", password="pw")),
        ("redis://:p@ss@h:6379/0?name=a%40b", settings(ep("h"), password="p@ss", client_name="a@b")),
        ("redis://h:6379/0?password=p%40ss", settings(ep("h"), password="p@ss")),
        ("unix://:pw@/run/redis%401.sock", settings(Endpoint(unix_path="/run/redis@1.sock"), password="pw")),
    ],
)
def test_valid_urls_with_at_signs_still_parse(text: str, expected: ConnectionSettings) -> None:
    """'@' in the userinfo, or after the host with no ':' before it, or written %40, is accepted."""
    assert expected == parse_configuration(text)


def test_chained_errors_do_not_carry_the_password() -> None:
    """No ConfigurationError keeps a more detailed cause or context that would print the password."""
    for text in (f"redis://u:abc/{TAIL}@h", f"server=[{TAIL}@x]", f"redis://u:{TAIL}@[::1"):
        with pytest.raises(ConfigurationError) as info:
            parse_configuration(text)
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_configuration_error_is_a_value_error() -> None:
    """Callers may catch TickerQError or plain ValueError."""
    with pytest.raises(ValueError, match="empty"):
        parse_configuration("")
    with pytest.raises(TickerQError):
        parse_configuration("h:0")


# --- masking ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("localhost:6379,password=x", "localhost:6379,password=***"),
        ("server=h;PASSWORD=a=b;ssl=true", "server=h;PASSWORD=***;ssl=true"),
        ("password=x", "password=***"),
        ("redis://u:pw@h/0", "redis://u:***@h/0"),
        ("redis://:p%40w@h", "redis://:***@h"),
        ("redis://u:p/w@h", "redis://u:***@h"),
        ("redis://h/0?db=1&password=a,b&name=n", "redis://h/0?db=1&password=***&name=n"),
        ("redis://alice@h:6379/0", "redis://alice@h:6379/0"),
        ("h:1,name=n", "h:1,name=n"),
        ("h,password=abc,SECRETTAIL", "h,password=***"),
        ("h;password=a,b;x;ssl=true,c", "h;password=***;ssl=true,c"),
        ("h,password=a,colour=red,Server=s", "h,password=***,Server=s"),
        ("h,password=a, NAME =n", "h,password=***, NAME =n"),
        ("h,password=a,password=b", "h,password=***,password=***"),
        ("redis://:pa@ss/SECRETTAIL@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://u:a#b@h", "redis://u:***@h"),
        ("redis://a@b:pw@h", "redis://a@b:***@h"),
        ("redis:/u:pw@h", "redis:/u:***@h"),
        ("redis://h?password=a#b", "redis://h?password=***"),
        ("redis://h?password=a&b&db=1", "redis://h?password=***&db=1"),
        ("redis://h?password=a?name=b&db=1", "redis://h?password=***&db=1"),
        ("redis://h?Pass%77ord=x&db=1", "redis://h?Pass%77ord=***&db=1"),
        ("redis://h?pass\tword=x", "redis://h?pass\tword=***"),
        ("redis://h:6379/0?password=p@ss", "redis://h:***"),
    ],
)
def test_mask_configuration(text: str, masked: str) -> None:
    """mask_configuration replaces password values and URL passwords with ***, leaving the rest."""
    assert masked == mask_configuration(text)


# --- properties -------------------------------------------------------------------------

_hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
_hosts = st.one_of(
    _hostnames, st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: str(a).split("%")[0])
)
# What an option string can carry: no separators, no surrounding whitespace.
_values = st.text(st.characters(codec="utf-8", exclude_characters=",;"), min_size=1, max_size=20).filter(
    lambda s: s == s.strip()
)
_passwords = st.text(st.sampled_from(string.ascii_letters + string.digits), min_size=6)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@given(
    host=_hosts,
    port=st.integers(1, 65535),
    database=st.integers(0, 2**31 - 1),
    password=st.none() | _values,
    username=st.none() | _values,
)
def test_round_trip_option_string_and_url(
    host: str, port: int, database: int, password: str | None, username: str | None
) -> None:
    """Settings rendered as an option string and as a redis:// URL both parse back to themselves."""
    expected = settings(ep(host, port), database=database, password=password, username=username)
    pairs = f"{_bracketed(host)}:{port},defaultDatabase={database}"
    pairs += "" if password is None else f",password={password}"
    pairs += "" if username is None else f";user={username}"
    userinfo = quote(username or "", safe="") + ("" if password is None else ":" + quote(password, safe=""))
    url = f"redis://{userinfo}{'@' if userinfo else ''}{_bracketed(host)}:{port}/{database}"
    assert expected == parse_configuration(pairs)
    assert expected == parse_configuration(url)
    assert (ep(host, port),) == parse_configuration(str(ep(host, port))).endpoints


def _renderings(password: str) -> list[str]:
    """Everything a user could see for configurations that carry ``password``."""
    seen = []
    for text in (f"h:1,password={password}", f"redis://u:{password}@h/1", f"unix:///s?password={password}"):
        parsed = parse_configuration(text)
        seen += [repr(parsed), str(parsed), parsed.describe(), mask_configuration(text)]
    bad_inputs = [
        f"h:0,password={password}",
        f"h,password={password},ssl=maybe",
        f"h,pasword={password}",
        f"password={password}",
        f"redis://u:{password}@h:0",
        f"redis://u:{password}@h/x",
        f"redis://u:{password}@[::1",
        f"rediss://:{password}@h?ssl=false",
    ]
    for text in bad_inputs:
        try:
            parse_configuration(text)
        except ConfigurationError as exc:
            seen.append(str(exc))
        else:
            raise AssertionError(f"no error for {text!r}")
    return seen


@given(password=_passwords)
def test_password_never_shown(password: str) -> None:
    """A random password appears in no repr, str, describe(), masked text or error message."""
    reference = " ".join(_renderings("ZZZZZZ"))
    assume(password not in reference)  # e.g. "expected" is a word of the messages
    for text in _renderings(password):
        assert password not in text


_fragments = st.sampled_from(
    [*"ah1:[]@/?#&=,; %.-+", "redis://", "rediss://", "unix://", "password=", "db=", "::1", "serviceName="]
)


@given(text=st.text() | st.lists(_fragments).map("".join))
def test_any_text_parses_or_raises_configuration_error(text: str) -> None:
    """Arbitrary input either parses or raises ConfigurationError, never another exception."""
    try:
        parsed = parse_configuration(text)
    except ConfigurationError:
        return
    assert parsed.endpoints


_host_pieces = st.sampled_from(["a", "b1", ".", "..", "-", "_", "x" * 60, ":6379", ",", "[::1]"])


@given(pieces=st.lists(_host_pieces, min_size=1))
def test_parsed_hosts_encode_as_idna(pieces: list[str]) -> None:
    """Every host that parses is one the socket layer can encode (no UnicodeError at connect time)."""
    for prefix in ("", "redis://"):
        try:
            parsed = parse_configuration(prefix + "".join(pieces))
        except ConfigurationError:
            continue
        for endpoint in parsed.endpoints:
            if endpoint.host is not None:
                endpoint.host.encode("idna")


# Passwords a user might paste unencoded: separators of both notations and URL delimiters.
_PASSWORD_PUNCTUATION = ",;@/?#:=&"
_awkward_passwords = st.text(
    st.sampled_from(string.ascii_letters + string.digits + _PASSWORD_PUNCTUATION), min_size=6
)
# One password of each shape, to collect the fixed words of every message.
_REFERENCE_PASSWORDS = ["ZZZZZZ", "12345", *(f"ZZ{c}ZZ" for c in _PASSWORD_PUNCTUATION)]
_REFERENCE_PASSWORDS += [f"{p}{c}Z=Z" for p in ("ZZ", "12") for c in _PASSWORD_PUNCTUATION]
_REFERENCE_PASSWORDS += [f"ZZ{c}9=Z" for c in _PASSWORD_PUNCTUATION]
_MIN_FRAGMENT = 5


def _awkward_renderings(password: str) -> list[str]:
    """Everything shown for configurations carrying ``password`` unencoded, valid or not."""
    templates = [
        "h:1,password={}",
        "server=h;password={};ssl=true",
        "password={}",
        "h:0,password={}",
        "h,password={},ssl=maybe",
        "h,pasword={}",  # not a password to mask_configuration, but never echoed
        "redis://u:{}@h/1",
        "redis://:{}@h:0",
        "redis://u:{}@h/x",
        "redis://u:{}@[::1",
        "rediss://:{}@h?ssl=false",
        "unix://:{}@/s.sock",
        "unix:///s?password={}",
        "redis://h?password={}&db=x",
    ]
    seen = []
    for template in templates:
        text = template.format(password)
        if "pasword" not in template:
            seen.append(mask_configuration(text))
        try:
            parsed = parse_configuration(text)
        except ConfigurationError as exc:
            seen.append(messages(exc))
        else:
            seen += [repr(parsed), str(parsed), parsed.describe()]
    return seen


_REFERENCE = " ".join(text for p in _REFERENCE_PASSWORDS for text in _awkward_renderings(p))


@given(password=_awkward_passwords)
def test_awkward_password_never_shown(password: str) -> None:
    """Neither a password holding separators nor any longer piece of it is ever shown.

    Pieces are the runs of letters and digits between punctuation. Exempt are runs
    written right before '=' (after ',' they read as an option name, which is shown
    when unknown: the documented limit) and runs that occur in the messages anyway.
    """
    assume(password not in _REFERENCE)  # e.g. "expected" is a word of the messages
    pieces = [
        match.group()
        for match in re.finditer(r"(?<![A-Za-z0-9])[A-Za-z0-9]+(?![A-Za-z0-9=])", password)
        if len(match.group()) >= _MIN_FRAGMENT and match.group() not in _REFERENCE
    ]
    for text in _awkward_renderings(password):
        assert password not in text
        for piece in pieces:
            assert piece not in text, (piece, text)
