"""Parse the Redis ``configuration`` string into an immutable :class:`ConnectionSettings`.

Two notations are accepted: StackExchange.Redis option strings
(``"localhost:6379,password=x"``, ``"server=h:6379;ssl=true"``) and redis-py URLs
(``redis://``, ``rediss://``, ``unix://``). Everything here is pure: nothing opens a
socket or resolves a name. A password never reaches a repr, ``describe()`` or an
error message.

Passwords that contain separators
---------------------------------
In an option string a value runs to the next ``,`` or ``;``, as in StackExchange.Redis,
so a password containing one of them cannot be written there: use a URL and
percent-encode it (``redis://:a%2Cb@host``). When one is written anyway, what follows
the separator is read as tokens of its own. To keep that tail out of endpoints,
``describe()``, logs and messages:

* An endpoint written as a bare token (``host:port``) must come before ``password=``.
  A bare token after a ``password=`` is rejected with a :class:`ConfigurationError`
  that does not show it (``server=host:port`` may still follow). StackExchange.Redis
  would take it as an endpoint; we refuse, because it may be the password's tail.
* A ``name=value`` token after it is read as an option, as StackExchange.Redis does.
  The value of an unknown option is never shown, and its name only when it looks like
  an option name (a letter or ``_``, then letters, digits, ``_``, ``.``, ``-``).
* An endpoint containing ``@`` (say a URL with a mistyped scheme) is never shown.

In a URL the userinfo ends at the first ``/``, ``?`` or ``#`` (as in redis-py), so those,
and ``@``, must be percent-encoded in a password. An ``@`` after the host -- in the
path, query or fragment -- is the mark of a password that was not
(``redis://:pa/ss@host`` reads as host ``""``, port ``pa``, db ``ss@host``). So when
the authority also has a ``:`` (a password or a port) such a URL is rejected, even
where redis-py would accept it: write an ``@`` after the host as ``%40``
(``?password=p%40ss``). Without a ``:`` it is parsed, but an error about it shows no
part of the URL. A query item without ``=`` that follows ``password=`` (the tail of a
password holding ``&``) is not shown either.

What remains is text in a password that reads as an option: ``,name=value`` (``&`` in
a URL query) shows ``name`` in the "unknown option" error, or sets the option when
``name`` is a known one.

:func:`mask_configuration` errs the other way: a ``password=`` value is hidden up to
the next separator that starts a known option (so an unknown tail is hidden too), and
a URL's userinfo password up to the *last* ``@`` of the text.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit

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
# DNS limits (RFC 1035): the socket layer's idna codec raises a bare UnicodeError on an
# empty or over-long label, so such a name must fail here, as configuration.
_MAX_LABEL = 63
_MAX_NAME = 253
_SHOWN_LENGTH = 80  # longer values are cut in messages: a 10,000-character host is noise
# Masking errs on the side of hiding too much: the URL userinfo runs to the *last* '@'
# so an unencoded '/', '?' or '#' inside a password cannot expose its tail. The user
# name may hold an '@' (urllib splits at the last one), and "redis:/" is forgiven.
_URL_USERINFO_RE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:/+[^:/?#]*:(.+)@", re.DOTALL)
_PAIRS_KEY_RE = re.compile(r"(?:^|[,;])([^,;=]*)=")
_URL_KEY_RE = re.compile(r"[?&]([^?&=]*)=")
# An option name that may be echoed in an error; anything else may be password material.
_SHOWN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_UNSAFE_URL_CHARS = str.maketrans("", "", "\t\r\n")  # removed by urlsplit


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
    ``user:password@``. It may hide a little more than the password, never less: a
    ``password=`` value is hidden up to the next separator that starts a known option,
    a URL's userinfo password up to the last ``@`` of the text.
    """
    spans: list[tuple[int, int]] = []
    userinfo = _URL_USERINFO_RE.match(text)
    if userinfo is not None:
        spans.append(userinfo.span(1))
    spans += _password_spans(text, _PAIRS_KEY_RE, ",;", {*_PAIR_OPTIONS, *_ENDPOINT_KEYS})
    spans += _password_spans(text, _URL_KEY_RE, "&", set(_URL_OPTIONS))
    masked: list[str] = []
    end = 0
    for start, stop in _merged(spans):
        masked += [text[end:start], _MASK]
        end = stop
    return "".join([*masked, text[end:]])


def _option_name(key: str) -> str:
    """The option name ``key`` stands for, as leniently as either notation reads it."""
    return unquote_plus(key.translate(_UNSAFE_URL_CHARS)).strip().lower()


def _password_spans(
    text: str, key_re: re.Pattern[str], separators: str, known: set[str]
) -> list[tuple[int, int]]:
    """Where the ``password=`` values are: each runs to the next separator before a known option."""
    spans = []
    for match in key_re.finditer(text):
        if _option_name(match.group(1)) != "password":
            continue
        stop = len(text)
        for index in range(match.end(), len(text)):
            if text[index] in separators:
                following = key_re.match(text, index)
                if following is not None and _option_name(following.group(1)) in known:
                    stop = index
                    break
        spans.append((match.end(), stop))
    return spans


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


@functools.lru_cache(maxsize=32)
def parse_configuration(text: str) -> ConnectionSettings:
    """Parse a StackExchange.Redis option string or a redis-py URL.

    A string is parsed once: validating the option and opening the connections
    share the result (the settings are immutable). A refused string is not cached.

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
        # The value is never echoed: a misspelt "pasword=" would otherwise leak it. Nor is
        # a name unlike an option name: it may be the tail of a password holding ',' or '&'.
        what = f"{key!r} (value not shown)" if _SHOWN_NAME_RE.fullmatch(key) else "(name and value not shown)"
        raise ConfigurationError(f"unknown option {what}: expected one of {known}")
    fields[option[1]] = option[2](key, value)


def _shown(value: str) -> str:
    """``value`` quoted for a message, cut short (with its length) when it is long."""
    if len(value) <= _SHOWN_LENGTH:
        return repr(value)
    return f"{value[: _SHOWN_LENGTH // 2]!r}... ({len(value)} characters)"


def _check_dns_name(host: str, where: str) -> None:
    """Refuse a host name the resolver cannot take: empty or over-long labels, or too long."""
    name = host[:-1] if host.endswith(".") else host  # a trailing dot (an absolute name) is fine
    labels = name.split(".")
    if len(name) <= _MAX_NAME and all(0 < len(label) <= _MAX_LABEL for label in labels):
        return
    if len(name) > _MAX_NAME:
        problem = f"is longer than {_MAX_NAME} characters"
    elif any(not label for label in labels):
        problem = "has an empty label"
    else:
        problem = f"has a label of {max(map(len, labels))} characters"
    raise ConfigurationError(
        f"{where} has host {_shown(host)}, which {problem} and so is not a DNS name: expected "
        f"labels of 1 to {_MAX_LABEL} characters separated by single dots, {_MAX_NAME} characters "
        "at most, or an IP address ('10.0.0.1', '[::1]')"
    )


def _parse_host_port(token: str, *, label: str) -> tuple[str, int | None]:
    if "@" in token:  # Never a host; perhaps a URL with a mistyped scheme, password and all.
        raise ConfigurationError(
            f"{label} (not shown: it contains '@' and may hold a password) is not host[:port]: "
            "expected e.g. 'localhost:6379', or a URL starting redis://, rediss:// or unix://"
        )
    where = f"{label} {_shown(token)}"
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
            what = "an empty host" if not host else f"host {_shown(host)}"
            raise ConfigurationError(f"{where} has {what}: expected host[:port], e.g. 'localhost:6379'")
        _check_dns_name(host, where)
    if port_text is None:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigurationError(f"{where} has port {_shown(port_text)}: expected a number from 1 to 65535")
    return host, int(port_text)


def _settings(hosts: list[tuple[str, int | None]], fields: dict[str, Any]) -> ConnectionSettings:
    default = DEFAULT_SENTINEL_PORT if fields.get("service_name") else DEFAULT_PORT
    endpoints = dict.fromkeys(Endpoint(host=h, port=default if p is None else p) for h, p in hosts)
    return ConnectionSettings(endpoints=tuple(endpoints), **fields)


def _parse_pairs(text: str) -> ConnectionSettings:
    hosts: list[tuple[str, int | None]] = []
    fields: dict[str, Any] = {}
    after_password = False
    for token in re.split(r"[,;]", text):
        key, equals, value = token.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            if key and after_password:
                raise ConfigurationError(
                    "an endpoint follows 'password=' (not shown: it may be the rest of a password "
                    "containing ',' or ';'): expected endpoints before 'password=', or 'server=host:port'; "
                    "a password with ',' or ';' needs a URL, percent-encoded, e.g. 'redis://:a%2Cb@host'"
                )
            if key:
                hosts.append(_parse_host_port(key, label="endpoint"))
        elif not key:
            raise ConfigurationError("an option has an empty name before '=': expected name=value")
        elif key.lower() in _ENDPOINT_KEYS:
            hosts.append(_parse_host_port(value, label=f"option {key!r}"))
        else:
            _apply_option(fields, key, value, _PAIR_OPTIONS)
            after_password = after_password or key.lower() == "password"
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
    # An '@' after the host is the mark of a userinfo cut short by a '/', '?' or '#' in
    # the password, whose pieces are now in the host, port, path or query.
    at_after_host = "@" in url.path + url.query + url.fragment
    if not (at_after_host and _URL_USERINFO_RE.match(text)):  # no ':' before it: no password
        try:
            return _parse_url_parts(url)
        except ConfigurationError:
            if not at_after_host:
                raise
    # Raised outside the handler, so the detailed message is not kept as __context__.
    raise ConfigurationError(
        f"{url.scheme} URL (not shown) is ambiguous or not valid: it has an '@' after the host, so "
        "a password may hold an unencoded '/', '?' or '#'; expected "
        f"{url.scheme}://[user][:password]@host[:port][/db][?name=value&...] with '/', '?', '#' "
        "and '@' percent-encoded in the user name and password, and any '@' after the host as %40"
    )


def _parse_url_parts(url: SplitResult) -> ConnectionSettings:
    if url.fragment:
        raise ConfigurationError(f"URL has a '#' fragment: expected {url.scheme}://...[?name=value&...]")
    fields: dict[str, Any] = {}
    after_password = False
    for item in filter(None, url.query.split("&")):
        key, equals, value = item.partition("=")
        key = unquote_plus(key).strip()
        if not equals:
            # After password=, it may be the rest of a password holding an unencoded '&'.
            shown = f"{key!r}" if _SHOWN_NAME_RE.fullmatch(key) and not after_password else "(not shown)"
            raise ConfigurationError(f"URL query item {shown} has no '=': expected name=value")
        _apply_option(fields, key, unquote_plus(value).strip(), _URL_OPTIONS)
        after_password = after_password or key.lower() == "password"
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
