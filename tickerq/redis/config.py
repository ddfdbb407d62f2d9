"""Parse the Redis ``configuration`` string into an immutable :class:`ConnectionSettings`.

Two notations are accepted: StackExchange.Redis option strings
(``"localhost:6379,password=x"``, ``"server=h:6379;ssl=true"``) and redis-py URLs
(``redis://``, ``rediss://``, ``unix://``). Everything here is pure: nothing opens a
socket or resolves a name. A password never reaches a repr, ``describe()`` or an
error message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

import attrs

from tickerq.errors import ConfigurationError

__all__ = ["ConnectionSettings", "Endpoint", "mask_configuration", "parse_configuration"]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_MASK = "***"
_INT32_MAX = 2**31 - 1  # StackExchange.Redis options are Int32
_URL_SCHEMES = ("redis", "rediss", "unix")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NUMBER_RE = re.compile(r"[+-]?[0-9]+")
# Masking errs on the side of hiding too much: the URL userinfo runs to the *last* '@'
# so an unencoded '/' or '?' inside a password cannot expose its tail.
_URL_USERINFO_RE = re.compile(r"^(\s*[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)(.+)(@)", re.DOTALL)
_URL_PASSWORD_RE = re.compile(r"([?&]\s*password\s*=)[^&#]*", re.IGNORECASE)
_PAIRS_PASSWORD_RE = re.compile(r"((?:^|[,;])\s*password\s*=)[^,;]*", re.IGNORECASE)


def _check_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigurationError(f"port={value!r} is out of range: expected 1..65535")


@attrs.frozen(kw_only=True)
class Endpoint:
    """One Redis server (or Sentinel) address: a TCP ``host:port`` or a unix socket.

    Attributes:
        host: Host name or IP address; ``None`` for a unix socket. IPv6 addresses
            are stored without brackets.
        port: TCP port, 1..65535.
        unix_path: Path of the unix socket; ``None`` for TCP.
    """

    host: str | None = None
    port: int = attrs.field(default=DEFAULT_PORT, validator=_check_port)
    unix_path: str | None = attrs.field(default=None)

    @unix_path.validator
    def _check_target(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if (self.host is None) == (value is None) or self.host == "" or value == "":
            raise ConfigurationError(f"host={self.host!r}, unix_path={value!r}: expected exactly one of them")

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"{host}:{self.port}"


def _to_endpoints(value: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    endpoints = tuple(value)
    if not endpoints:
        raise ConfigurationError("endpoints=() is empty: expected at least one endpoint")
    return endpoints


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        limit = timedelta(milliseconds=minimum) if isinstance(value, timedelta) else minimum
        if value < limit:
            raise ConfigurationError(f"{attribute.name}={value!r} is too small: expected {limit!r} or more")

    return check


@attrs.frozen(kw_only=True)
class ConnectionSettings:
    """Where and how to connect, as parsed from a ``configuration`` string.

    Attributes:
        endpoints: The servers, in the order given (duplicates dropped); the
            Sentinels when ``service_name`` is set.
        username: ACL user name.
        password: Never shown by ``repr()``, ``str()`` or :meth:`describe`.
        ssl: Connect with TLS.
        database: Database index to ``SELECT``.
        client_name: Sent with ``CLIENT SETNAME``.
        service_name: The Sentinel service (master name); set means Sentinel mode.
        abort_connect, connect_retry, connect_timeout, sync_timeout, keepalive: The
            StackExchange.Redis options ``abortConnect`` etc.; ``None`` when not given.
    """

    endpoints: tuple[Endpoint, ...] = attrs.field(converter=_to_endpoints)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else repr(_MASK))
    ssl: bool = False
    database: int = attrs.field(default=0, validator=_at_least(0))
    client_name: str | None = None
    service_name: str | None = attrs.field(default=None)
    abort_connect: bool | None = None
    connect_retry: int | None = attrs.field(default=None, validator=_at_least(0))
    connect_timeout: timedelta | None = attrs.field(default=None, validator=_at_least(1))
    sync_timeout: timedelta | None = attrs.field(default=None, validator=_at_least(1))
    keepalive: timedelta | None = attrs.field(default=None, validator=_at_least(0))

    @service_name.validator
    def _check_sentinels(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        sockets = [str(e) for e in self.endpoints if e.unix_path is not None]
        if sockets and (value is not None or self.ssl):
            raise ConfigurationError(f"endpoint {sockets[0]!r}: serviceName and ssl need host:port endpoints")

    def describe(self) -> str:
        """A one-line summary that is safe to log, e.g. ``"127.0.0.1:6379 db=0 ssl"``."""
        parts = [",".join(str(endpoint) for endpoint in self.endpoints)]
        if self.service_name is not None:
            parts.append(f"sentinel service={self.service_name}")
        parts.append(f"db={self.database}")
        if self.ssl:
            parts.append("ssl")
        if self.username is not None:
            parts.append(f"user={self.username}")
        if self.password is not None:
            parts.append(f"password={_MASK}")
        if self.client_name is not None:
            parts.append(f"name={self.client_name}")
        return " ".join(parts)


def mask_configuration(text: str) -> str:
    """Return ``text`` with every password value replaced by ``***``.

    Covers ``password=`` options (both notations) and the password in a URL's
    ``user:password@``. It may hide a little more than the password, never less.
    """
    text = _URL_USERINFO_RE.sub(rf"\g<1>{_MASK}\g<3>", text)
    text = _URL_PASSWORD_RE.sub(rf"\g<1>{_MASK}", text)
    return _PAIRS_PASSWORD_RE.sub(rf"\g<1>{_MASK}", text)


def parse_configuration(text: str) -> ConnectionSettings:
    """Parse a StackExchange.Redis option string or a redis-py URL.

    Args:
        text: E.g. ``"localhost:6379,password=x"``,
            ``"sentinel1:26379,sentinel2:26379,serviceName=mymaster"``,
            ``"rediss://user:pw@host:6380/2?connectTimeout=5000"`` or
            ``"unix:///run/redis.sock?db=1"``.

    Returns:
        The settings. Ports default to 6379, or 26379 for Sentinels (``serviceName``).

    Raises:
        ConfigurationError: Naming the option or endpoint, its value (a password
            masked) and what was expected.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"configuration is a {type(text).__name__}: expected a string")
    text = text.strip()
    if not text:
        raise ConfigurationError("configuration is empty: expected e.g. 'localhost:6379' or 'redis://host/0'")
    scheme = _SCHEME_RE.match(text)
    if scheme is None:
        return _parse_pairs(text)
    if scheme.group(1).lower() not in _URL_SCHEMES:
        raise ConfigurationError(f"URL scheme {scheme.group(1)!r}: expected redis://, rediss:// or unix://")
    return _parse_url(text)


def _text(key: str, value: str) -> str | None:
    return value or None


def _boolean(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigurationError(f"{key}={value!r} is not a boolean: expected true or false")
    return value.lower() == "true"


def _integer(key: str, value: str, *, minimum: int = 0, unit: str = "") -> int:
    expected = f"expected a whole number{unit} from {minimum} to {_INT32_MAX}"
    if not _NUMBER_RE.fullmatch(value):
        raise ConfigurationError(f"{key}={value!r} is not a number: {expected}")
    if not minimum <= int(value) <= _INT32_MAX:
        raise ConfigurationError(f"{key}={value!r} is out of range: {expected}")
    return int(value)


def _milliseconds(key: str, value: str) -> timedelta:
    return timedelta(milliseconds=_integer(key, value, minimum=1, unit=" of milliseconds"))


def _seconds(key: str, value: str) -> timedelta:
    return timedelta(seconds=_integer(key, value, unit=" of seconds"))


_Option = tuple[str, str, Callable[[str, str], Any]]  # display key, field name, converter
_OPTIONS: tuple[_Option, ...] = (
    ("abortConnect", "abort_connect", _boolean),
    ("connectRetry", "connect_retry", _integer),
    ("connectTimeout", "connect_timeout", _milliseconds),
    ("defaultDatabase", "database", _integer),
    ("keepAlive", "keepalive", _seconds),
    ("name", "client_name", _text),
    ("password", "password", _text),
    ("serviceName", "service_name", _text),
    ("ssl", "ssl", _boolean),
    ("syncTimeout", "sync_timeout", _milliseconds),
    ("user", "username", _text),
)
_PAIR_OPTIONS = {option[0].lower(): option for option in _OPTIONS}
_URL_OPTIONS = {**_PAIR_OPTIONS, "db": ("db", "database", _integer)}
_ENDPOINT_KEYS = ("server", "host", "endpoint")


def _apply_option(fields: dict[str, Any], key: str, value: str, table: dict[str, _Option]) -> None:
    option = table.get(key.lower())
    if option is None:
        known = ", ".join(sorted({o[0] for o in table.values()}, key=str.lower))
        # The value is not echoed: a misspelt "pasword=" would otherwise leak it.
        raise ConfigurationError(f"unknown option {key!r} (value not shown): expected one of {known}")
    fields[option[1]] = option[2](key, value)


def _parse_host_port(token: str, *, label: str) -> tuple[str, int | None]:
    where = f"{label} {token!r}"
    port_text: str | None
    if token.startswith("["):
        host, bracket, rest = token[1:].partition("]")
        if not bracket:
            raise ConfigurationError(f"{where} has an unterminated '[': expected '[IPv6]' or '[IPv6]:port'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {host!r} is not an IPv6 address") from exc
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"{where} has {rest!r} after ']': expected '[IPv6]:port'")
        port_text = rest[1:] if rest else None
    elif token.count(":") > 1:
        raise ConfigurationError(f"{where} looks like a bare IPv6 address: expected '[IPv6]:port'")
    else:
        host, colon, port_text = token.partition(":")
        port_text = port_text if colon else None
        if not _HOST_RE.fullmatch(host):
            what = "an empty host" if not host else f"host {host!r}"
            raise ConfigurationError(f"{where} has {what}: expected host[:port], e.g. 'localhost:6379'")
    if port_text is None:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigurationError(f"{where} has port {port_text!r}: expected a number from 1 to 65535")
    return host, int(port_text)


def _settings(hosts: list[tuple[str, int | None]], fields: dict[str, Any]) -> ConnectionSettings:
    default = DEFAULT_SENTINEL_PORT if fields.get("service_name") else DEFAULT_PORT
    endpoints = dict.fromkeys(Endpoint(host=h, port=default if p is None else p) for h, p in hosts)
    return ConnectionSettings(endpoints=tuple(endpoints), **fields)


def _parse_pairs(text: str) -> ConnectionSettings:
    hosts: list[tuple[str, int | None]] = []
    fields: dict[str, Any] = {}
    for token in re.split(r"[,;]", text):
        key, equals, value = token.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            if key:
                hosts.append(_parse_host_port(key, label="endpoint"))
        elif not key:
            raise ConfigurationError("an option has an empty name before '=': expected name=value")
        elif key.lower() in _ENDPOINT_KEYS:
            hosts.append(_parse_host_port(value, label=f"option {key!r}"))
        else:
            _apply_option(fields, key, value, _PAIR_OPTIONS)
    if not hosts:
        raise ConfigurationError(f"no endpoint in {mask_configuration(text)!r}: expected host[:port]")
    return _settings(hosts, fields)


def _parse_url(text: str) -> ConnectionSettings:
    try:
        url = urlsplit(text)
    except ValueError:
        # Not chained: urllib's message may quote part of the netloc, password included.
        raise ConfigurationError(
            f"URL {mask_configuration(text)!r} is malformed: expected a valid URL"
        ) from None
    if url.fragment:
        raise ConfigurationError(f"URL has a '#' fragment: expected {url.scheme}://...[?name=value&...]")
    fields: dict[str, Any] = {}
    for item in filter(None, url.query.split("&")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ConfigurationError(f"URL query item {unquote_plus(key)!r} has no '=': expected name=value")
        _apply_option(fields, unquote_plus(key).strip(), unquote_plus(value).strip(), _URL_OPTIONS)
    userinfo, _, hostport = url.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if user:  # As in redis-py, credentials in the URL win over query options.
        fields["username"] = unquote(user)
    if password:
        fields["password"] = unquote(password)
    if url.scheme == "unix":
        if hostport or not url.path:
            raise ConfigurationError(f"unix URL host {hostport!r}: expected unix:///absolute/path.sock")
        return ConnectionSettings(endpoints=(Endpoint(unix_path=unquote(url.path)),), **fields)
    if url.scheme == "rediss":
        if fields.get("ssl") is False:
            raise ConfigurationError("ssl='false' contradicts rediss://: use redis:// for plain TCP")
        fields["ssl"] = True
    if "," in hostport:
        raise ConfigurationError(f"URL host {hostport!r}: expected one endpoint (several need 'h1,h2')")
    if not hostport:
        raise ConfigurationError(f"URL has an empty host: expected {url.scheme}://host[:port][/db]")
    host = _parse_host_port(hostport, label="URL host")
    db_text = url.path[1:] if url.path.startswith("/") else url.path
    if db_text:
        database = _integer("URL path db", unquote(db_text))
        fields.setdefault("database", database)  # As in redis-py, ?db= wins over the path.
    return _settings([host], fields)
