"""The exception hierarchy: everything tickerq raises derives from TickerQError.

Each subclass also derives from the built-in exception that fits, so callers may
catch either ``tickerq.ConfigurationError`` or a plain ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailedError",
    "ConfigurationError",
    "ConnectionFailedError",
    "InvalidKeyError",
    "KeyTypeError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "RedisCommandError",
    "RedisReadOnlyError",
    "RedisUnavailableError",
    "SerializationError",
    "ShutdownError",
    "TickerQError",
]


class TickerQError(Exception):
    """The root of every exception tickerq raises.

    Besides the message, errors carry structured fields, so callers and tests
    need not parse messages; each is None when it does not apply.

    Attributes:
        operation: What tickerq was doing, e.g. ``"heartbeat"`` or ``"lock acquire"``.
        key: The Redis key involved.
        name: The lock, election, cache key or job the operation was about.
    """

    def __init__(
        self, *args: object, operation: str | None = None, key: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(*args)
        self.operation = operation
        self.key = key
        self.name = name


class ConfigurationError(TickerQError, ValueError):
    """An option or connection string has a value that cannot be used."""


class InvalidKeyError(TickerQError, ValueError):
    """A key or name given by the caller cannot be used (empty, or reserved)."""


class RedisUnavailableError(TickerQError, ConnectionError):
    """Redis could not be reached, or did not answer in time."""


class RedisReadOnlyError(RedisUnavailableError):
    """Redis refused a write because the server is a read-only replica.

    Usually a failover in progress: tickerq looks for the new master and a
    retry soon after succeeds.
    """


class RedisCommandError(TickerQError, RuntimeError):
    """Redis refused a command for a reason a retry does not fix by itself.

    Attributes:
        code: The error code Redis replied with, e.g. ``"OOM"`` (``maxmemory``
            reached with ``noeviction``), ``"NOPERM"`` (an ACL rule) or ``"ERR"``.
    """

    def __init__(self, *args: object, code: str = "ERR", **fields: str | None) -> None:
        super().__init__(*args, **fields)
        self.code = code


class ConnectionFailedError(RedisUnavailableError):
    """The initial connection failed and ``abort_on_connect_fail`` is set."""


class AuthenticationFailedError(ConnectionFailedError):
    """Redis refused the credentials: a wrong user name or password, or none given.

    Raised by ``init_resources()`` (whatever ``abort_on_connect_fail`` says is
    about reachability, not credentials; with it off, the failure is logged) and
    by any call that reaches Redis.

    Attributes:
        password_required: True when the server wants a password and none was
            sent; False when the user name or password was wrong.
    """

    def __init__(self, message: str, *, password_required: bool = False, **fields: str | None) -> None:
        super().__init__(message, **fields)
        self.password_required = password_required

    def __reduce__(self) -> tuple[type[AuthenticationFailedError], tuple[str], dict[str, bool]]:
        return type(self), (str(self),), {"password_required": self.password_required}


class KeyTypeError(TickerQError, TypeError):
    """A key holds a Redis type or a value tickerq did not write there."""


class SerializationError(TickerQError, TypeError):
    """A value cannot be converted to or from the JSON tickerq stores in Redis."""


class ShutdownError(TickerQError, RuntimeError):
    """The node is shutting down: ``shutdown_resources()`` released this call or refused new work."""


class LockError(TickerQError):
    """Base class for distributed lock failures."""


class LockLostError(LockError):
    """The lease is no longer held: it expired or another owner took it."""


class LockTimeoutError(LockError, TimeoutError):
    """The lock could not be acquired in time (or at once, when not blocking)."""
